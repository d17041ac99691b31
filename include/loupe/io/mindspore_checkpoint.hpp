// MindSpore checkpoint (.ckpt) reader. The file is protobuf, the Checkpoint
// message of MindSpore's mindspore/ccsrc/utils/checkpoint.proto (proto2):
//
//   message Checkpoint { message Value { required string tag = 1;
//                          oneof value { TensorProto tensor = 2; MapTensorProto maptensor = 3; } }
//                        repeated Value value = 1; }
//   message TensorProto { repeated int64 dims = 1; required string tensor_type = 2;
//                         required bytes tensor_content = 3; }
//
// save_checkpoint (mindspore/python/mindspore/train/serialization.py, 2.3)
// writes one serialised Checkpoint of one Value per parameter, back to back,
// which protobuf reads as one message; a tensor over 512 MiB is cut into
// several consecutive Values with the same tag, each repeating dims and type,
// that load_checkpoint joins. dims [0] or none: a scalar or a string (the
// counters append_dict adds), kept as metadata. With crc_check the file ends in
// "crc_num" and 10 digits of a CRC-32, which loupe skips. tensor_content is raw
// little-endian C-order data: a tensor in one Value is a zero-copy slice of the
// mmapped file. Every length is checked against its enclosing message.
#pragma once
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "source_tensor.hpp"

namespace loupe {

namespace mindspore_detail {

enum Wire : uint32_t { kVarint = 0, kFixed64 = 1, kBytes = 2, kFixed32 = 5 };

// A bounded protobuf reader over [p, end) of `file`.
struct Proto {
  const Blob& file;
  size_t p, end;
  const std::string& what;  // for messages: the file and the record being read

  bool done() const { return p >= end; }
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p >= end) fail(what, ": truncated varint at offset ", p);
      const uint8_t b = file.data[p++];
      v |= uint64_t(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
    }
    fail(what, ": varint longer than 10 bytes at offset ", p);
  }
  // A length-delimited field's [begin, end), checked against the enclosing message.
  std::pair<size_t, size_t> bytes() {
    const size_t at = p;
    const uint64_t n = varint();
    if (n > end - p)
      fail(what, ": a field at offset ", at, " claims ", n, " bytes but its message has ", end - p, " left (truncated or corrupt)");
    const size_t b = p;
    p += size_t(n);
    return {b, p};
  }
  void skip(uint32_t wire) {
    const size_t at = p;
    switch (wire) {
      case kVarint: varint(); return;
      case kFixed64: if (end - p < 8) break; p += 8; return;
      case kFixed32: if (end - p < 4) break; p += 4; return;
      case kBytes: bytes(); return;
      default: fail(what, ": unsupported protobuf wire type ", wire, " at offset ", at, " (not a MindSpore checkpoint?)");
    }
    fail(what, ": truncated field at offset ", at);
  }
  // The next field's number and wire type.
  std::pair<uint32_t, uint32_t> key() {
    const uint64_t k = varint();
    if (k >> 32 || (k >> 3) == 0) fail(what, ": invalid protobuf field key ", k, " at offset ", p);
    return {uint32_t(k >> 3), uint32_t(k & 7)};
  }
  void expect(uint32_t field, uint32_t wire, uint32_t want) const {
    if (wire != want)
      fail(what, ": field ", field, " has wire type ", wire, ", expected ", want, " (not a MindSpore checkpoint?)");
  }
  std::string string(std::pair<size_t, size_t> r) const {
    return std::string(reinterpret_cast<const char*>(file.data + r.first), r.second - r.first);
  }
};

// MindSpore's dtype names (str(mindspore dtype), tensor_to_ms_type).
inline bool mindspore_dtype(const std::string& s, DType& t) {
  static const std::pair<const char*, DType> names[] = {
      {"Float32", DType::F32}, {"Float16", DType::F16}, {"BFloat16", DType::BF16}, {"Float64", DType::F64},
      {"Int64", DType::I64},   {"Int32", DType::I32},   {"Int16", DType::I16},     {"Int8", DType::I8}};
  for (const auto& [n, d] : names)
    if (s == n) return t = d, true;
  return false;
}

struct Value {
  std::string tag, type;
  std::vector<int64_t> dims;
  std::pair<size_t, size_t> content{0, 0};
};

inline Value read_value(Proto v) {
  Value out;
  bool has_tag = false, has_tensor = false;
  while (!v.done()) {
    const auto [field, wire] = v.key();
    if (field == 1) {
      v.expect(field, wire, kBytes);
      out.tag = v.string(v.bytes());
      has_tag = true;
    } else if (field == 2) {
      v.expect(field, wire, kBytes);
      const auto [b, e] = v.bytes();
      Proto t{v.file, b, e, v.what};
      bool has_type = false, has_content = false;
      while (!t.done()) {
        const auto [tf, tw] = t.key();
        if (tf == 1 && tw == kVarint) {
          out.dims.push_back(int64_t(t.varint()));
        } else if (tf == 1 && tw == kBytes) {  // packed (proto3 writers)
          const auto [pb, pe] = t.bytes();
          Proto d{t.file, pb, pe, t.what};
          while (!d.done()) out.dims.push_back(int64_t(d.varint()));
        } else if (tf == 2) {
          t.expect(tf, tw, kBytes);
          out.type = t.string(t.bytes());
          has_type = true;
        } else if (tf == 3) {
          t.expect(tf, tw, kBytes);
          out.content = t.bytes();
          has_content = true;
        } else {
          t.skip(tw);
        }
      }
      if (!has_type || !has_content)
        fail(v.what, ": parameter '", out.tag, "' has no ", has_type ? "tensor_content" : "tensor_type");
      has_tensor = true;
    } else if (field == 3) {
      fail(v.what, ": parameter '", out.tag, "' is a MapTensor, which loupe does not read");
    } else {
      v.skip(wire);
    }
  }
  if (!has_tag) fail(v.what, ": a value without a tag (parameter name)");
  if (!has_tensor) fail(v.what, ": parameter '", out.tag, "' has no tensor");
  return out;
}

}  // namespace mindspore_detail

// True if the bytes start like a MindSpore checkpoint: a Checkpoint.value
// record whose first field is the tag (a string), followed by the tensor
// (field 2). A JSON index starting with "\n{" fails here: JSON text holds no 0x12.
inline bool is_mindspore_checkpoint(const Blob& b) {
  if (b.size < 4 || b.data[0] != 0x0a) return false;
  const std::string what = b.name;
  try {
    mindspore_detail::Proto p{b, 1, b.size, what};
    const auto [vb, ve] = p.bytes();
    mindspore_detail::Proto v{b, vb, ve, what};
    const auto [f1, w1] = v.key();
    if (f1 != 1 || w1 != mindspore_detail::kBytes) return false;
    v.bytes();
    if (v.done()) return false;
    const auto [f2, w2] = v.key();
    return f2 == 2 && w2 == mindspore_detail::kBytes;
  } catch (const Error&) {
    return false;
  }
}

// Every tensor of a MindSpore checkpoint in file order; scalars and strings
// (dims [0] or none) go to `metadata` as (name, type).
inline std::vector<SourceTensor> read_mindspore_checkpoint(const Blob& file,
                                                           std::vector<std::pair<std::string, std::string>>* metadata = nullptr) {
  using namespace mindspore_detail;
  const std::string& fn = file.name;
  size_t end = file.size;
  // save_checkpoint(crc_check=True): b"crc_num" + 10 digits after the last record.
  if (end >= 17 && std::memcmp(file.data + end - 17, "crc_num", 7) == 0) end -= 17;
  Proto top{file, 0, end, fn};
  std::vector<Value> values;
  while (!top.done()) {
    const auto [field, wire] = top.key();
    if (field != 1) {
      top.skip(wire);
      continue;
    }
    top.expect(field, wire, kBytes);
    const auto [b, e] = top.bytes();
    values.push_back(read_value(Proto{file, b, e, fn}));
  }
  if (values.empty()) fail(fn, ": the checkpoint holds no parameters");

  std::vector<SourceTensor> out;
  for (size_t i = 0; i < values.size();) {
    // A run of values with the same tag: the chunks of one tensor.
    size_t j = i + 1;
    while (j < values.size() && values[j].tag == values[i].tag) ++j;
    const Value& v = values[j - 1];  // load_checkpoint takes dims and type from the last chunk
    const std::string what = fn + ": parameter '" + v.tag + "'";
    if (v.dims.empty() || (v.dims.size() == 1 && v.dims[0] == 0)) {  // a scalar or a string
      if (metadata) metadata->push_back({v.tag, v.type});
      i = j;
      continue;
    }
    SourceTensor t;
    t.name = v.tag;
    if (!mindspore_dtype(v.type, t.dtype)) fail(what, ": tensor_type '", v.type, "' is not supported (Float32, Float16, BFloat16, Float64, Int8-Int64)");
    t.shape = v.dims;
    const uint64_t want = checked_nbytes(t.dtype, t.shape, what);
    uint64_t have = 0;
    for (size_t k = i; k < j; ++k) {
      if (values[k].type != v.type || values[k].dims != v.dims)
        fail(what, ": its ", j - i, " chunks disagree on type or shape");
      have += values[k].content.second - values[k].content.first;
    }
    if (have != want)
      fail(what, ": ", have, " bytes of tensor_content but shape ", t.shape_str(), " of ", v.type, " needs ", want);
    if (j - i == 1) {
      t.data = file.slice(v.content.first, size_t(have), fn + ":" + v.tag);
    } else {  // joined chunks: at most the file's size in all
      std::vector<uint8_t> bytes;
      bytes.reserve(size_t(have));
      for (size_t k = i; k < j; ++k)
        bytes.insert(bytes.end(), file.data + values[k].content.first, file.data + values[k].content.second);
      t.data = Blob::from_bytes(std::move(bytes), fn + ":" + v.tag);
    }
    out.push_back(std::move(t));
    i = j;
  }
  return out;
}

}  // namespace loupe
