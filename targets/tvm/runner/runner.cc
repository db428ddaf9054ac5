// edgefold-runner: run a compiled edgefold library on a device, without Python.
//
//   edgefold-runner LIBRARY.so WEIGHTS.bin INPUTS.bin OUTPUTS.bin [--repeat N] [--threads N]
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

int main(int argc, char** argv) {
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
