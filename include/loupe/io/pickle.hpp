// A minimal, non-executing unpickler for the pickles torch.save writes (protocol 2,
// plus the protocol 3-5 opcodes a newer pickler may emit). It builds a tree of
// plain values and never calls anything: GLOBAL must name an allowed callable,
// and REDUCE only records "call F with these arguments" for the caller to
// interpret (torch_checkpoint.hpp does, for _rebuild_tensor_v2). Any other
// global (os.system, builtins.eval, ...) is refused when it is read.
//
// Containers become immutable once placed inside another container, so the tree
// is acyclic and its depth (bounded by kMaxDepth) is known as it is built.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "file.hpp"

namespace loupe {

struct PyValue;
using PyRef = std::shared_ptr<PyValue>;

struct PyValue {
  enum class Kind { None, Bool, Int, Float, Str, Bytes, Tuple, List, Dict, Global, Call, PersId };
  Kind kind = Kind::None;
  int64_t i = 0;           // Bool, Int
  double f = 0;            // Float
  std::string s;           // Str, Bytes; Global: "module.name"; Call: the callable's name
  std::vector<PyRef> items;                    // Tuple, List; Call: the arguments; PersId: [pid]
  std::vector<std::pair<PyRef, PyRef>> dict;   // Dict, in insertion order
  PyRef state;             // BUILD's argument (e.g. an OrderedDict's _metadata), ignored by readers
  int depth = 0;           // 0 for scalars, 1 + deepest child for containers
  bool sealed = false;     // inside another container: no more mutation

  const char* kind_name() const {
    const char* n[] = {"None", "bool", "int", "float", "str", "bytes", "tuple", "list", "dict", "global", "call", "persistent id"};
    return n[int(kind)];
  }
};

// Globals a torch state dict needs; nothing here can run code when "called".
inline bool torch_allowed_global(const std::string& g) {
  static const char* ok[] = {
      "collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
      "torch.FloatStorage", "torch.HalfStorage", "torch.BFloat16Storage", "torch.DoubleStorage",
      "torch.LongStorage", "torch.IntStorage", "torch.ShortStorage", "torch.CharStorage",
      "torch.ByteStorage", "torch.BoolStorage",
      "torch.float32", "torch.float16", "torch.bfloat16", "torch.float64", "torch.int64",
      "torch.int32", "torch.int16", "torch.int8", "torch.uint8", "torch.bool"};
  for (const char* o : ok)
    if (g == o) return true;
  return false;
}

struct Unpickler {
  static constexpr int kMaxDepth = 64;
  // A 7B state dict pickles to ~10^4 objects; the cap keeps a hostile pickle from
  // exhausting memory (each object costs ~150 bytes).
  static constexpr size_t kMaxObjects = size_t(1) << 22;

  const Blob& in;              // the pickle bytes (name used in messages)
  bool (*allowed)(const std::string&);

  explicit Unpickler(const Blob& b, bool (*allowed_global)(const std::string&) = torch_allowed_global)
      : in(b), allowed(allowed_global) {}

  PyRef load();

 private:
  Reader r{in};
  size_t op_at = 0;            // offset of the opcode being run
  std::vector<PyRef> stack;
  std::vector<size_t> marks;
  std::unordered_map<uint64_t, PyRef> memo;
  size_t objects = 0;  // values made plus memo entries, against kMaxObjects

  void put(uint64_t key) {
    if (++objects > kMaxObjects) error("more than " + std::to_string(kMaxObjects) + " objects: not a state dict");
    memo[key] = top();
  }

  [[noreturn]] void error(const std::string& what) const { fail(in.name, ": pickle offset ", op_at, ": ", what); }
  PyRef make(PyValue::Kind k) {
    if (++objects > kMaxObjects) error("more than " + std::to_string(kMaxObjects) + " objects: not a state dict");
    auto v = std::make_shared<PyValue>();
    v->kind = k;
    return v;
  }
  PyRef pop() {
    if (stack.empty() || (!marks.empty() && stack.size() <= marks.back())) error("stack underflow");
    PyRef v = std::move(stack.back());
    stack.pop_back();
    return v;
  }
  PyRef& top() {
    if (stack.empty() || (!marks.empty() && stack.size() <= marks.back())) error("stack underflow");
    return stack.back();
  }
  std::vector<PyRef> pop_mark() {
    if (marks.empty()) error("no MARK on the stack");
    size_t m = marks.back();
    marks.pop_back();
    std::vector<PyRef> v(std::make_move_iterator(stack.begin() + std::ptrdiff_t(m)), std::make_move_iterator(stack.end()));
    stack.resize(m);
    return v;
  }
  // Put `child` into `parent`: seal the child, refuse mutating a sealed parent.
  void adopt(PyValue& parent, const PyRef& child) {
    if (parent.sealed || &parent == child.get()) error("refusing to mutate a container already inside another (recursive structure)");
    child->sealed = true;
    parent.depth = std::max(parent.depth, child->depth + 1);
    if (parent.depth > kMaxDepth) error("nesting deeper than " + std::to_string(kMaxDepth));
  }
  PyRef tuple(std::vector<PyRef> items) {
    PyRef t = make(PyValue::Kind::Tuple);
    for (auto& x : items) adopt(*t, x);
    t->items = std::move(items);
    return t;
  }
  void set_items(PyRef& d, std::vector<PyRef>& kv) {
    if (d->kind != PyValue::Kind::Dict) error(std::string("SETITEM(S) on a ") + d->kind_name());
    if (kv.size() % 2) error("SETITEMS with an odd number of items");
    for (size_t k = 0; k < kv.size(); k += 2) {
      adopt(*d, kv[k]), adopt(*d, kv[k + 1]);
      d->dict.emplace_back(kv[k], kv[k + 1]);
    }
  }
  void append(PyRef& l, std::vector<PyRef>& items) {
    if (l->kind != PyValue::Kind::List) error(std::string("APPEND(S) on a ") + l->kind_name());
    for (auto& x : items) adopt(*l, x), l->items.push_back(x);
  }
  PyRef string(size_t n, PyValue::Kind k) {
    PyRef v = make(k);
    v->s = r.string(n, "pickle string");
    return v;
  }
  size_t length(uint64_t n) {
    if (n > r.left()) error("length " + std::to_string(n) + " runs past the end of the pickle");
    return size_t(n);
  }
  PyRef global(std::string module, std::string name) {
    std::string g = module + "." + name;
    if (!allowed(g)) error("refusing global " + g + " (only torch state dicts are supported)");
    PyRef v = make(PyValue::Kind::Global);
    v->s = std::move(g);
    return v;
  }
  std::string line() {  // GLOBAL's newline-terminated module / name
    size_t start = r.pos;
    while (r.left() && r.blob.data[r.pos] != '\n') ++r.pos;
    if (!r.left()) error("unterminated GLOBAL line");
    std::string s(reinterpret_cast<const char*>(r.blob.data + start), r.pos - start);
    ++r.pos;
    return s;
  }
};

inline PyRef Unpickler::load() {
  using K = PyValue::Kind;
  for (;;) {
    op_at = r.pos;
    uint8_t op = r.read<uint8_t>("pickle opcode (no STOP)");
    switch (op) {
      case 0x80: {  // PROTO
        uint8_t v = r.read<uint8_t>("protocol");
        if (v < 2 || v > 5) error("unsupported pickle protocol " + std::to_string(v));
        break;
      }
      case 0x95: r.read<uint64_t>("frame length"); break;  // FRAME: a hint, data follows inline
      case '.': {  // STOP
        PyRef v = pop();
        if (!stack.empty() || !marks.empty()) error("STOP with items left on the stack");
        return v;
      }
      case '(': marks.push_back(stack.size()); break;  // MARK
      case '0': pop(); break;                          // POP
      case '1': pop_mark(); break;                     // POP_MARK
      case '2': {                                      // DUP
        PyRef t = top();
        stack.push_back(t);
        break;
      }
      case 'N': stack.push_back(make(K::None)); break;
      case 0x88: case 0x89: {  // NEWTRUE / NEWFALSE
        PyRef v = make(K::Bool);
        v->i = op == 0x88;
        stack.push_back(v);
        break;
      }
      case 'J': case 'K': case 'M': {  // BININT (i32), BININT1 (u8), BININT2 (u16)
        PyRef v = make(K::Int);
        v->i = op == 'J' ? r.read<int32_t>("BININT") : op == 'K' ? r.read<uint8_t>("BININT1") : r.read<uint16_t>("BININT2");
        stack.push_back(v);
        break;
      }
      case 0x8a: case 0x8b: {  // LONG1 / LONG4: little-endian two's complement
        uint64_t n = op == 0x8a ? r.read<uint8_t>("LONG1 length") : r.read<uint32_t>("LONG4 length");
        const uint8_t* p = r.bytes(length(n), "long integer");
        if (n > 8) {  // allowed only if it is a sign extension of a 64-bit value
          uint8_t ext = (p[7] & 0x80) ? 0xff : 0;
          for (uint64_t k = 8; k < n; ++k)
            if (p[k] != ext) error("integer does not fit in 64 bits");
        }
        uint64_t u = 0;
        for (uint64_t k = 0; k < n && k < 8; ++k) u |= uint64_t(p[k]) << (8 * k);
        if (n > 0 && n < 8 && (p[n - 1] & 0x80)) u |= ~uint64_t(0) << (8 * n);  // sign-extend
        PyRef v = make(K::Int);
        v->i = int64_t(u);
        stack.push_back(v);
        break;
      }
      case 'G': {  // BINFLOAT: big-endian double
        const uint8_t* p = r.bytes(8, "BINFLOAT");
        uint64_t u = 0;
        for (int k = 0; k < 8; ++k) u = (u << 8) | p[k];
        PyRef v = make(K::Float);
        std::memcpy(&v->f, &u, 8);
        stack.push_back(v);
        break;
      }
      case 'X': stack.push_back(string(length(r.read<uint32_t>("BINUNICODE length")), K::Str)); break;
      case 0x8c: stack.push_back(string(r.read<uint8_t>("SHORT_BINUNICODE length"), K::Str)); break;
      case 0x8d: stack.push_back(string(length(r.read<uint64_t>("BINUNICODE8 length")), K::Str)); break;
      case 'B': stack.push_back(string(length(r.read<uint32_t>("BINBYTES length")), K::Bytes)); break;
      case 'C': stack.push_back(string(r.read<uint8_t>("SHORT_BINBYTES length"), K::Bytes)); break;
      case 0x8e: stack.push_back(string(length(r.read<uint64_t>("BINBYTES8 length")), K::Bytes)); break;
      case ')': stack.push_back(make(K::Tuple)); break;  // EMPTY_TUPLE
      case ']': stack.push_back(make(K::List)); break;   // EMPTY_LIST
      case '}': stack.push_back(make(K::Dict)); break;   // EMPTY_DICT
      case 't': stack.push_back(tuple(pop_mark())); break;
      case 0x85: case 0x86: case 0x87: {  // TUPLE1 / TUPLE2 / TUPLE3
        std::vector<PyRef> v(size_t(op - 0x84));
        for (size_t k = v.size(); k-- > 0;) v[k] = pop();
        stack.push_back(tuple(std::move(v)));
        break;
      }
      case 'l': {  // LIST
        PyRef l = make(K::List);
        std::vector<PyRef> items = pop_mark();
        append(l, items);
        stack.push_back(l);
        break;
      }
      case 'd': {  // DICT
        PyRef d = make(K::Dict);
        std::vector<PyRef> kv = pop_mark();
        set_items(d, kv);
        stack.push_back(d);
        break;
      }
      case 'a': {  // APPEND
        std::vector<PyRef> x{pop()};
        append(top(), x);
        break;
      }
      case 'e': {  // APPENDS
        std::vector<PyRef> x = pop_mark();
        append(top(), x);
        break;
      }
      case 's': {  // SETITEM
        std::vector<PyRef> kv(2);
        kv[1] = pop(), kv[0] = pop();
        set_items(top(), kv);
        break;
      }
      case 'u': {  // SETITEMS
        std::vector<PyRef> kv = pop_mark();
        set_items(top(), kv);
        break;
      }
      case 'c': {  // GLOBAL "module\nname\n"
        std::string module = line();
        stack.push_back(global(module, line()));
        break;
      }
      case 0x93: {  // STACK_GLOBAL
        PyRef name = pop(), module = pop();
        if (module->kind != K::Str || name->kind != K::Str) error("STACK_GLOBAL needs two strings");
        stack.push_back(global(module->s, name->s));
        break;
      }
      case 'R': {  // REDUCE: record the call, run nothing
        PyRef args = pop(), fn = pop();
        if (fn->kind != K::Global) error(std::string("REDUCE of a ") + fn->kind_name() + ", not a global");
        if (args->kind != K::Tuple) error("REDUCE arguments are not a tuple");
        if (fn->s == "collections.OrderedDict") {  // OrderedDict() is just an empty dict
          if (!args->items.empty()) error("OrderedDict called with arguments");
          stack.push_back(make(K::Dict));
          break;
        }
        PyRef c = make(K::Call);
        c->s = fn->s;
        for (auto& a : args->items) adopt(*c, a);
        c->items = args->items;
        stack.push_back(c);
        break;
      }
      case 'b': {  // BUILD: attach state (an OrderedDict's _metadata) without running __setstate__
        PyRef st = pop();
        PyRef& obj = top();
        adopt(*obj, st);
        obj->state = st;
        break;
      }
      case 'Q': {  // BINPERSID: torch's ('storage', type, key, location, numel)
        PyRef pid = pop();
        PyRef v = make(K::PersId);
        adopt(*v, pid);
        v->items.push_back(pid);
        stack.push_back(v);
        break;
      }
      case 'q': put(r.read<uint8_t>("BINPUT index")); break;
      case 'r': put(r.read<uint32_t>("LONG_BINPUT index")); break;
      case 0x94: put(memo.size()); break;  // MEMOIZE
      case 'h': case 'j': {  // BINGET / LONG_BINGET
        uint64_t k = op == 'h' ? r.read<uint8_t>("BINGET index") : r.read<uint32_t>("LONG_BINGET index");
        auto it = memo.find(k);
        if (it == memo.end()) error("memo key " + std::to_string(k) + " was never stored");
        stack.push_back(it->second);
        break;
      }
      default: {
        char hex[8];
        std::snprintf(hex, sizeof hex, "0x%02x", op);
        error(std::string("unsupported pickle opcode ") + hex + " (not something torch.save writes for a state dict)");
      }
    }
  }
}

// Unpickle a whole blob; everything after STOP is ignored, as Python does.
inline PyRef unpickle(const Blob& b, bool (*allowed)(const std::string&) = torch_allowed_global) {
  Unpickler u(b, allowed);
  return u.load();
}

}  // namespace loupe
