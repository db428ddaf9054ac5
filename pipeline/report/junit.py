"""JUnit XML with one test case per gate, the format every CI system displays."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path


def write_junit(path: Path, gates: list[dict], suite: str = "edgefold.gates") -> Path:
    """Write the gate verdicts as a JUnit XML file at `path` (one test case per gate); returns the path."""
    failures = sum(not g["passed"] for g in gates)
    root = ET.Element("testsuites", name="edgefold", tests=str(len(gates)), failures=str(failures))
    suite_el = ET.SubElement(root, "testsuite", name=suite, tests=str(len(gates)), failures=str(failures))
    for gate in gates:
        case = ET.SubElement(suite_el, "testcase", classname=suite, name=gate["name"])
        if not gate["passed"]:
            failure = ET.SubElement(case, "failure", message=gate["detail"], type="GateFailed")
            failure.text = gate["detail"]
        else:
            ET.SubElement(case, "system-out").text = gate["detail"]
    ET.indent(root)
    Path(path).write_text(ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n")
    return Path(path)
