"""Build MetaSchedule's candidate kernels in this process.

The stock LocalBuilder starts worker processes per batch, and each imports every
tensor intrinsic (about a minute here), which runs into its 30 s build timeout: every
candidate fails with "Build errors". Building in-process reuses the intrinsics this
process already has, and costs a fraction of a second per candidate. Candidates are
exported as shared libraries (with the profile's cross compiler when there is one), so
a remote RPC device can load them without a compiler of its own.
"""

from __future__ import annotations

import os
import tempfile


def make_builder(cross_compiler: str | None = None, folder: str | os.PathLike | None = None):
    """A MetaSchedule builder object (needs TVM imported). Candidates go into `folder`
    (the tuning run's scratch folder, removed when it ends), not into /tmp for good."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder

    @derived_object
    class InProcessBuilder(PyBuilder):
        def __init__(self):
            super().__init__()
            self.cross_compiler = cross_compiler

        def build(self, build_inputs):
            return [self._build_one(item) for item in build_inputs]

        def _build_one(self, item):
            import tvm
            from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

            try:
                mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(item.mod)
                library = tvm.driver.build(mod, target=item.target)
                path = os.path.join(tempfile.mkdtemp(prefix="candidate-", dir=folder), "candidate.so")
                if self.cross_compiler:
                    from tvm.support import cc

                    library.export_library(path, fcompile=cc.cross_compiler(self.cross_compiler))
                else:
                    library.export_library(path)
                return BuilderResult(path, None)
            except Exception as exc:  # a bad candidate is a result, not a crash
                return BuilderResult(None, f"{type(exc).__name__}: {str(exc)[:2000]}")

    return InProcessBuilder()


def runner_worker_init(family: str = "x86") -> None:
    """Initializer of measurement workers: skip the intrinsic sets this target does not use."""
    from edgefold.targets.tvm.environment import skip_tensor_intrinsics

    skip_tensor_intrinsics(family)
