// edgefold-runner: run a compiled edgefold library on a device, without Python.
//
//   edgefold-runner LIBRARY.so WEIGHTS.bin INPUTS.bin OUTPUTS.bin [--repeat N]
//   edgefold-runner --llm DECODE.so WEIGHTS.bin INPUTS.bin OUTPUTS.bin [--generate N] [--prefill PREFILL.so]
//
// The second form runs an LLM artifact (see targets/tvm/llm): INPUTS holds `tokens`
// (int64 [n]) and `cache_len` (int64 [1]); the runner owns the KV cache (zeroed), feeds
// the tokens (through PREFILL.so's `prefill` in one call when given, else one `decode`
// call each), writes every decode step's logits to OUTPUTS (`logits` [steps, vocab]),
// then greedily generates N more tokens and prints their ids and the median ms per token.
//
// WEIGHTS, INPUTS and OUTPUTS use edgefold's small tensor file format ("EFW1", see
// targets/tvm/weights.py): a header of (dtype, shape, offset, size, name) entries, then
// 64-byte aligned data. The library's `main` takes the inputs, then the weights, in file
// order. Weights are memory-mapped, never copied. With --repeat N the runner also prints
// the median latency of N calls after one warm-up call.
//
// Builds against the TVM runtime only (libtvm_runtime.so + libtvm_ffi.so), e.g.
//   aarch64-linux-gnu-g++ -std=c++17 -O2 runner.cc -I include -L lib -ltvm_runtime -ltvm_ffi
#include <dlpack/dlpack.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;

// A view of bytes that live elsewhere (the memory map): nothing to allocate or free.
struct ViewAlloc {
  void* data;
  void AllocData(DLTensor* tensor) { tensor->data = data; }
  void FreeData(DLTensor*) {}
};

// Memory the runner owns (the KV cache, small id tensors).
struct DefaultAlloc {
  void AllocData(DLTensor* tensor) {
    size_t bytes = ffi::GetDataSize(*tensor);
    tensor->data = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
  }
  void FreeData(DLTensor* tensor) { std::free(tensor->data); }
};

struct Entry {
  std::string name;
  DLDataType dtype;
  std::vector<int64_t> shape;
  uint64_t offset, nbytes;
};

class TensorFile {  // read side: mmap the file, parse the header
 public:
  explicit TensorFile(const std::string& path) {
    int fd = open(path.c_str(), O_RDONLY);
    if (fd < 0) throw std::runtime_error("cannot open " + path);
    struct stat st;
    fstat(fd, &st);
    size_ = static_cast<size_t>(st.st_size);
    base_ = static_cast<uint8_t*>(mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0));
    close(fd);
    if (base_ == MAP_FAILED || size_ < 8 || std::memcmp(base_, "EFW1", 4) != 0)
      throw std::runtime_error(path + " is not an edgefold tensor file");
    size_t cursor = 4;
    uint32_t count = Read<uint32_t>(&cursor);
    for (uint32_t i = 0; i < count; ++i) {
      Entry e;
      e.dtype.code = Read<uint8_t>(&cursor);
      e.dtype.bits = Read<uint8_t>(&cursor);
      e.dtype.lanes = Read<uint16_t>(&cursor);
      uint32_t ndim = Read<uint32_t>(&cursor);
      for (uint32_t d = 0; d < ndim; ++d) e.shape.push_back(Read<int64_t>(&cursor));
      e.offset = Read<uint64_t>(&cursor);
      e.nbytes = Read<uint64_t>(&cursor);
      uint32_t length = Read<uint32_t>(&cursor);
      e.name.assign(reinterpret_cast<const char*>(base_ + cursor), length);
      cursor += length;
      if (e.offset + e.nbytes > size_) throw std::runtime_error(path + " is truncated");
      entries_.push_back(e);
    }
  }
  std::vector<ffi::Tensor> Tensors() const {
    std::vector<ffi::Tensor> out;
    DLDevice cpu{kDLCPU, 0};
    for (const Entry& e : entries_) {
      out.push_back(ffi::Tensor::FromNDAlloc(ViewAlloc{base_ + e.offset}, ffi::ShapeView(e.shape.data(), e.shape.size()),
                                             e.dtype, cpu));
    }
    return out;
  }
  const std::vector<Entry>& entries() const { return entries_; }

 private:
  template <typename T>
  T Read(size_t* cursor) const {
    T value;
    std::memcpy(&value, base_ + *cursor, sizeof(T));
    *cursor += sizeof(T);
    return value;
  }
  uint8_t* base_ = nullptr;
  size_t size_ = 0;
  std::vector<Entry> entries_;
};

static void WriteTensors(const std::string& path, const std::vector<ffi::Tensor>& tensors) {
  // Same layout as weights.py: header, then data at 64-byte aligned absolute offsets.
  std::vector<uint8_t> header = {'E', 'F', 'W', '1'};
  auto put = [&header](const void* p, size_t n) {
    const uint8_t* b = static_cast<const uint8_t*>(p);
    header.insert(header.end(), b, b + n);
  };
  uint32_t count = static_cast<uint32_t>(tensors.size());
  put(&count, 4);
  size_t header_size = 8;
  for (size_t i = 0; i < tensors.size(); ++i) {
    std::string name = "output" + std::to_string(i);
    header_size += 8 + 8 * tensors[i].ndim() + 20 + name.size();
  }
  auto align = [](uint64_t x) { return (x + 63) / 64 * 64; };
  uint64_t offset = align(header_size);
  std::vector<uint64_t> offsets;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const DLTensor* t = tensors[i].GetDLTensorPtr();
    std::string name = "output" + std::to_string(i);
    uint8_t code = t->dtype.code, bits = t->dtype.bits;
    uint16_t lanes = t->dtype.lanes;
    uint32_t ndim = static_cast<uint32_t>(t->ndim);
    put(&code, 1), put(&bits, 1), put(&lanes, 2), put(&ndim, 4);
    put(t->shape, 8 * t->ndim);
    uint64_t nbytes = ffi::GetDataSize(*t), length = name.size();
    uint32_t length32 = static_cast<uint32_t>(length);
    put(&offset, 8), put(&nbytes, 8), put(&length32, 4), put(name.data(), name.size());
    offsets.push_back(offset);
    offset = align(offset + nbytes);
  }
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) throw std::runtime_error("cannot write " + path);
  std::fwrite(header.data(), 1, header.size(), f);
  for (size_t i = 0; i < tensors.size(); ++i) {
    const DLTensor* t = tensors[i].GetDLTensorPtr();
    std::vector<uint8_t> pad(offsets[i] - static_cast<uint64_t>(std::ftell(f)), 0);
    std::fwrite(pad.data(), 1, pad.size(), f);
    std::fwrite(static_cast<const uint8_t*>(t->data) + t->byte_offset, 1, ffi::GetDataSize(*t), f);
  }
  std::fclose(f);
}

static std::vector<ffi::Tensor> Flatten(const ffi::Any& result) {
  if (auto tensor = result.as<ffi::Tensor>()) return {*tensor};
  std::vector<ffi::Tensor> out;
  for (const ffi::Any& item : result.cast<ffi::Array<ffi::Any>>()) {
    std::vector<ffi::Tensor> inner = Flatten(item);
    out.insert(out.end(), inner.begin(), inner.end());
  }
  return out;
}

static ffi::Function LoadEntry(const std::string& path, const char* name) {
  ffi::Module library = ffi::Module::LoadFromFile(path);
  ffi::Module vm = library->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
  vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, 2);  // cpu, device 0, pooled
  return vm->GetFunction(name).value();
}

static ffi::Tensor Int64Tensor(const std::vector<int64_t>& values, std::vector<int64_t> shape) {
  ffi::Tensor t = ffi::Tensor::FromNDAlloc(DefaultAlloc{}, ffi::ShapeView(shape.data(), shape.size()),
                                           DLDataType{kDLInt, 64, 1}, DLDevice{kDLCPU, 0});
  std::memcpy(t.data_ptr(), values.data(), values.size() * sizeof(int64_t));
  return t;
}

static int RunLlm(int argc, char** argv) {
  int generate = 0;
  std::string prefill_path;
  for (int i = 6; i + 1 < argc; i += 2) {
    if (std::string(argv[i]) == "--generate") generate = std::atoi(argv[i + 1]);
    if (std::string(argv[i]) == "--prefill") prefill_path = argv[i + 1];
  }
  ffi::Function decode = LoadEntry(argv[2], "decode");
  TensorFile weights(argv[3]), inputs(argv[4]);
  ffi::Tensor blob = weights.Tensors().at(0);
  std::vector<int64_t> tokens, cache_len;
  for (size_t i = 0; i < inputs.entries().size(); ++i) {
    const Entry& e = inputs.entries()[i];
    const int64_t* data = static_cast<const int64_t*>(inputs.Tensors()[i].data_ptr());
    std::vector<int64_t>& target = e.name == "tokens" ? tokens : cache_len;
    target.assign(data, data + e.nbytes / 8);
  }
  if (tokens.empty() || cache_len.size() != 1) throw std::runtime_error("INPUTS needs tokens and cache_len");
  std::vector<int64_t> cache_shape = {cache_len[0]};
  ffi::Tensor cache = ffi::Tensor::FromNDAlloc(DefaultAlloc{}, ffi::ShapeView(cache_shape.data(), 1),
                                               DLDataType{kDLFloat, 32, 1}, DLDevice{kDLCPU, 0});
  std::memset(cache.data_ptr(), 0, cache_len[0] * sizeof(float));
  std::vector<std::vector<float>> steps;
  ffi::Tensor logits;
  auto keep = [&](const ffi::Tensor& t) {
    const float* p = static_cast<const float*>(t.data_ptr());
    steps.emplace_back(p, p + t.numel());
  };
  int64_t position = 0;
  if (!prefill_path.empty()) {
    ffi::Function prefill = LoadEntry(prefill_path, "prefill");
    std::vector<int64_t> ids = tokens;  // the caller pads the prompt to the library's bucket
    logits = prefill(Int64Tensor(ids, {1, static_cast<int64_t>(ids.size())}), Int64Tensor({0}, {1}),
                     Int64Tensor({static_cast<int64_t>(ids.size())}, {1}), cache, blob).cast<ffi::Tensor>();
    keep(logits);
    position = static_cast<int64_t>(ids.size());
  } else {
    for (int64_t token : tokens) {
      logits = decode(Int64Tensor({token}, {1, 1}), Int64Tensor({position}, {1}), cache, blob).cast<ffi::Tensor>();
      keep(logits);
      ++position;
    }
  }
  std::vector<double> ms;
  std::printf("generated");
  std::fflush(stdout);
  for (int i = 0; i < generate && position < cache_len[0]; ++i) {
    const float* p = static_cast<const float*>(logits.data_ptr());
    int64_t next = std::max_element(p, p + logits.numel()) - p;
    std::printf(" %lld", static_cast<long long>(next));
    std::fflush(stdout);  // a caller streams the text as the ids come
    auto start = std::chrono::steady_clock::now();
    logits = decode(Int64Tensor({next}, {1, 1}), Int64Tensor({position}, {1}), cache, blob).cast<ffi::Tensor>();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
    ++position;
  }
  std::printf("\n");
  if (!ms.empty()) {
    std::sort(ms.begin(), ms.end());
    std::printf("median_ms_per_token %.4f\n", ms[ms.size() / 2]);
  }
  // logits of every fed step, [steps, vocab]
  std::vector<int64_t> shape = {static_cast<int64_t>(steps.size()), static_cast<int64_t>(steps[0].size())};
  ffi::Tensor out = ffi::Tensor::FromNDAlloc(DefaultAlloc{}, ffi::ShapeView(shape.data(), 2), DLDataType{kDLFloat, 32, 1},
                                             DLDevice{kDLCPU, 0});
  for (size_t i = 0; i < steps.size(); ++i)
    std::memcpy(static_cast<float*>(out.data_ptr()) + i * shape[1], steps[i].data(), shape[1] * sizeof(float));
  WriteTensors(argv[5], {out});
  return 0;
}

// TVM sizes its thread pool from the machine's core count, not from the CPUs this process may
// run on: in a 2-CPU container on a large host the default pool made decode 3x slower. The
// pool starts on the first parallel kernel, so setting TVM_NUM_THREADS here is in time.
static void SizeThreadPool() {
#ifdef __linux__
  if (std::getenv("TVM_NUM_THREADS") != nullptr) return;
  cpu_set_t usable;
  CPU_ZERO(&usable);
  if (sched_getaffinity(0, sizeof(usable), &usable) == 0 && CPU_COUNT(&usable) > 0) {
    setenv("TVM_NUM_THREADS", std::to_string(CPU_COUNT(&usable)).c_str(), 0);
  }
#endif
}

int main(int argc, char** argv) {
  SizeThreadPool();
  if (argc >= 6 && std::string(argv[1]) == "--llm") {
    try {
      return RunLlm(argc, argv);
    } catch (const std::exception& error) {
      std::fprintf(stderr, "edgefold-runner: %s\n", error.what());
      return 1;
    }
  }
  if (argc < 5) {
    std::fprintf(stderr, "usage: %s LIBRARY.so WEIGHTS.bin INPUTS.bin OUTPUTS.bin [--repeat N]\n", argv[0]);
    return 2;
  }
  int repeat = 0;
  for (int i = 5; i + 1 < argc; i += 2) {
    if (std::string(argv[i]) == "--repeat") repeat = std::atoi(argv[i + 1]);
  }
  try {
    ffi::Module library = ffi::Module::LoadFromFile(argv[1]);
    ffi::Module vm = library->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
    // device type, device id, allocator kind (2 = pooled)
    vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, 2);
    ffi::Function entry = vm->GetFunction("main").value();

    TensorFile weights(argv[2]), inputs(argv[3]);
    std::vector<ffi::Tensor> args = inputs.Tensors();
    std::vector<ffi::Tensor> params = weights.Tensors();
    args.insert(args.end(), params.begin(), params.end());
    std::vector<ffi::AnyView> packed(args.begin(), args.end());

    auto call = [&]() {
      ffi::Any result;
      entry.CallPacked(packed.data(), static_cast<int32_t>(packed.size()), &result);
      return result;
    };
    ffi::Any result = call();
    WriteTensors(argv[4], Flatten(result));
    if (repeat > 0) {
      std::vector<double> ms;
      for (int i = 0; i < repeat; ++i) {
        auto start = std::chrono::steady_clock::now();
        call();
        ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
      }
      std::sort(ms.begin(), ms.end());
      std::printf("median_ms %.4f\n", ms[ms.size() / 2]);
    }
  } catch (const std::exception& error) {
    std::fprintf(stderr, "edgefold-runner: %s\n", error.what());
    return 1;
  }
  return 0;
}
