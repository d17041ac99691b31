// PyTorch torch.save files (the zip format of torch >= 1.6) holding state dicts:
//   <archive>/data.pkl      the pickled dict (see pickle.hpp; nothing is executed)
//   <archive>/data/<key>    raw little-endian bytes of each storage
//   <archive>/byteorder     "little" (newer torch; absent means little)
// A tensor is pickled as _rebuild_tensor_v2(storage, storage_offset, size, stride,
// requires_grad, backward_hooks[, metadata]) with the storage a persistent id
// ('storage', torch.<T>Storage, key, location, numel); offsets, sizes and strides
// count elements. Contiguous tensors become zero-copy slices of the mmapped file;
// strided views (a transpose, a column slice, an expand) are gathered into owned
// memory, within a budget (kStridedCopyLimit) so a stride-0 view cannot blow up.
#pragma once
#include <new>
#include <string>
#include <vector>

#include "limits.hpp"
#include "pickle.hpp"
#include "source_tensor.hpp"
#include "zip.hpp"

namespace loupe {

// Pickles of the legacy (pre-1.6) format start with PROTO, not with a zip header.
inline bool is_legacy_torch_pickle(const Blob& b) { return b.size >= 2 && b.data[0] == 0x80 && b.data[1] <= 5; }

struct TorchCheckpointReader {
  const Blob& file;
  ZipArchive zip;
  std::string prefix;  // "<archive>/"
  std::vector<SourceTensor> tensors;
  uint64_t copy_budget;  // bytes strided copies may still take

  explicit TorchCheckpointReader(const Blob& f) : file(f), copy_budget(f.size + kStridedCopyLimit.value()) {}

  void read() {
    const std::string& fn = file.name;
    if (is_legacy_torch_pickle(file))
      fail(fn, ": legacy (pre-1.6, non-zip) torch.save format is not supported; re-save it with torch >= 1.6 "
               "(the default _use_new_zipfile_serialization=True) or convert it to safetensors");
    if (!is_zip(file)) fail(fn, ": not a torch.save zip archive (and not a safetensors file)");
    zip = ZipArchive::open(file);
    const ZipEntry* pkl = nullptr;
    for (const ZipEntry& e : zip.entries) {
      size_t slash = e.name.find('/');
      if (slash != std::string::npos && e.name.compare(slash, std::string::npos, "/data.pkl") == 0) {
        if (pkl) fail(fn, ": zip archive holds two pickles ('", pkl->name, "' and '", e.name, "')");
        pkl = &e;
        prefix = e.name.substr(0, slash + 1);
      }
    }
    if (!pkl) fail(fn, ": zip archive has no <archive>/data.pkl: not a torch.save file");
    if (const ZipEntry* bo = zip.find(prefix + "byteorder")) {
      std::string order(zip.data(*bo).view());
      if (order != "little") fail(fn, ": byteorder is '", order, "'; only little-endian checkpoints are supported");
    }
    PyRef root = unpickle(zip.data(*pkl));
    if (root->kind != PyValue::Kind::Dict)
      fail(fn, ": the pickled object is a ", root->kind_name(), ", expected a dict of tensors (a state dict)");
    walk(*root, "");
  }

  // Tensors at any depth of nested dicts, named "outer.inner"; plain values
  // (numbers, strings, None: epoch counters and the like) are skipped.
  void walk(const PyValue& d, const std::string& scope) {
    using K = PyValue::Kind;
    for (const auto& [k, v] : d.dict) {
      if (k->kind != K::Str) fail(file.name, ": state dict key is a ", k->kind_name(), ", not a string");
      std::string name = scope + k->s;
      if (v->kind == K::Call) tensors.push_back(tensor(*v, name));
      else if (v->kind == K::Dict) walk(*v, name + ".");
      else if (v->kind == K::List || v->kind == K::Tuple || v->kind == K::PersId)
        fail(file.name, ": '", name, "' is a ", v->kind_name(), "; only (nested) dicts of tensors are supported");
    }
  }

  static int64_t integer(const PyValue& v, const std::string& what) {
    if (v.kind != PyValue::Kind::Int) fail(what, " is a ", v.kind_name(), ", expected an int");
    if (v.i < 0) fail(what, " is negative (", v.i, ")");
    return v.i;
  }
  static std::vector<int64_t> ints(const PyValue& v, const std::string& what) {
    if (v.kind != PyValue::Kind::Tuple) fail(what, " is a ", v.kind_name(), ", expected a tuple");
    std::vector<int64_t> out;
    for (size_t k = 0; k < v.items.size(); ++k) out.push_back(integer(*v.items[k], what + "[" + std::to_string(k) + "]"));
    return out;
  }

  struct Storage {
    DType dtype;
    int64_t numel;
    Blob bytes;
  };

  Storage storage(const PyValue& v, const std::string& what) {
    using K = PyValue::Kind;
    if (v.kind != K::PersId) fail(what, ": storage argument is a ", v.kind_name(), ", not a persistent id");
    const PyValue& pid = *v.items.at(0);
    if (pid.kind != K::Tuple || pid.items.size() != 5 || pid.items[0]->kind != K::Str || pid.items[0]->s != "storage" ||
        pid.items[1]->kind != K::Global || pid.items[2]->kind != K::Str)
      fail(what, ": persistent id is not ('storage', type, key, location, numel)");
    const std::string& type = pid.items[1]->s;
    static const std::pair<const char*, DType> types[] = {
        {"torch.FloatStorage", DType::F32}, {"torch.HalfStorage", DType::F16},  {"torch.BFloat16Storage", DType::BF16},
        {"torch.DoubleStorage", DType::F64}, {"torch.LongStorage", DType::I64}, {"torch.IntStorage", DType::I32},
        {"torch.ShortStorage", DType::I16},  {"torch.CharStorage", DType::I8}};
    Storage s{DType::F32, 0, {}};
    bool known = false;
    for (auto& [n, t] : types)
      if (type == n) s.dtype = t, known = true;
    if (!known) fail(what, ": storage type ", type, " is not supported (F32, F16, BF16, F64 and signed integers are)");
    s.numel = integer(*pid.items[4], what + ": storage numel");
    const std::string key = pid.items[2]->s;
    const ZipEntry* e = zip.find(prefix + "data/" + key);
    if (!e) fail(what, ": storage '", key, "' is missing from the archive (no ", prefix, "data/", key, ")");
    Blob all = zip.data(*e);
    uint64_t need = uint64_t(checked_mul(s.numel, dtype_info(s.dtype).block_bytes, what + ": storage size"));
    if (need > all.size)
      fail(what, ": storage '", key, "' should hold ", s.numel, " ", dtype_name(s.dtype), " elements (", need,
           " bytes) but its zip entry has ", all.size, " bytes");
    s.bytes = all.slice(0, size_t(need), all.name);
    return s;
  }

  SourceTensor tensor(const PyValue& call, const std::string& name) {
    const std::string what = file.name + ": tensor '" + name + "'";
    if (call.s == "torch._utils._rebuild_parameter") {  // Parameter(data, requires_grad, hooks)
      if (call.items.empty() || call.items[0]->kind != PyValue::Kind::Call) fail(what, ": malformed _rebuild_parameter");
      return tensor(*call.items[0], name);
    }
    if (call.s != "torch._utils._rebuild_tensor_v2")
      fail(what, ": value is a call to ", call.s, ", not a tensor");
    if (call.items.size() != 6 && call.items.size() != 7)
      fail(what, ": _rebuild_tensor_v2 takes 6 or 7 arguments, got ", call.items.size());
    Storage st = storage(*call.items[0], what);
    const int64_t offset = integer(*call.items[1], what + ": storage_offset");
    SourceTensor t;
    t.name = name;
    t.dtype = st.dtype;
    t.shape = ints(*call.items[2], what + ": size");
    std::vector<int64_t> stride = ints(*call.items[3], what + ": stride");
    if (stride.size() != t.shape.size()) fail(what, ": size has ", t.shape.size(), " dims but stride has ", stride.size());
    const size_t es = size_t(dtype_info(t.dtype).block_bytes);
    const uint64_t nbytes = checked_nbytes(t.dtype, t.shape, what);
    const int64_t numel = t.numel();
    if (numel == 0) {
      t.data = Blob::from_bytes({}, file.name + ":" + name);
      return t;
    }
    // Highest element touched: offset + sum((size_d - 1) * stride_d) must lie in the storage.
    int64_t last = offset;
    for (size_t d = 0; d < stride.size(); ++d) {
      int64_t span = checked_mul(t.shape[d] - 1, stride[d], what);
      if (span > INT64_MAX - last) fail(what, ": size/stride overflow 64 bits");
      last += span;
    }
    if (last >= st.numel)
      fail(what, ": shape ", t.shape_str(), " at storage offset ", offset, " reaches element ", last,
           " but its storage holds ", st.numel);
    bool contiguous = true;
    int64_t expect = 1;
    for (size_t d = t.shape.size(); d-- > 0;) {
      if (t.shape[d] != 1 && stride[d] != expect) contiguous = false;
      expect *= t.shape[d];
    }
    if (contiguous) {
      t.data = st.bytes.slice(size_t(offset) * es, size_t(nbytes), file.name + ":" + name);
      return t;
    }
    if (nbytes > copy_budget)
      fail(what, ": a strided view (shape ", t.shape_str(), ") whose copy of ", nbytes, " bytes would take the copies of this ",
           file.size, "-byte file past its size plus ", kStridedCopyLimit.describe());
    copy_budget -= nbytes;
    std::vector<uint8_t> out;
    try {
      out.resize(size_t(nbytes));
    } catch (const std::bad_alloc&) {
      fail(what, ": cannot allocate ", nbytes, " bytes to copy a strided tensor");
    }
    // Odometer over all but the innermost dimension; copy one innermost run at a time.
    const size_t nd = t.shape.size();
    const int64_t inner = t.shape[nd - 1], inner_stride = stride[nd - 1];
    std::vector<int64_t> idx(nd, 0);
    uint8_t* dst = out.data();
    const uint8_t* src = st.bytes.data;
    for (int64_t row = 0, rows = numel / inner; row < rows; ++row) {
      int64_t base = offset;
      for (size_t d = 0; d + 1 < nd; ++d) base += idx[d] * stride[d];
      if (inner_stride == 1) {
        std::memcpy(dst, src + size_t(base) * es, size_t(inner) * es);
        dst += size_t(inner) * es;
      } else {
        for (int64_t j = 0; j < inner; ++j, dst += es) std::memcpy(dst, src + size_t(base + j * inner_stride) * es, es);
      }
      for (size_t d = nd - 1; d-- > 0;) {
        if (++idx[d] < t.shape[d]) break;
        idx[d] = 0;
      }
    }
    t.data = Blob::from_bytes(std::move(out), file.name + ":" + name);
    return t;
  }
};

// All tensors of a torch.save'd (nested) state dict, in pickle order.
inline std::vector<SourceTensor> read_torch_checkpoint(const Blob& file) {
  TorchCheckpointReader r(file);
  r.read();
  return std::move(r.tensors);
}
inline std::vector<SourceTensor> read_torch_checkpoint(const std::string& path) {
  return read_torch_checkpoint(Blob::open(path));
}

}  // namespace loupe
