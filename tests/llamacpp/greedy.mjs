// llama.cpp (via npm node-llama-cpp's prebuilt binaries) as a reference:
//   node tests/llamacpp/greedy.mjs MODEL.gguf PROMPT_IDS_JSON N [LORA.gguf[,LORA2.gguf]|"" SCALE[,SCALE2] [TEXT|@FILE]]
// prints {"greedy": N greedy ids, "tokenize": llama.cpp's ids for TEXT (or one
// array per line of FILE), BOS included} as JSON.
// The prompt is passed as token ids so both engines see the same input.
process.env.NODE_LLAMA_CPP_SKIP_DOWNLOAD = "true";
const { getLlama } = await import("node-llama-cpp");

const [model_path, ids_json, n_str, lora_path, lora_scale, text] = process.argv.slice(2);
const llama = await getLlama({ gpu: false, build: "never", skipDownload: true, usePrebuiltBinaries: true, logLevel: "error" });
const model = await llama.loadModel({ modelPath: model_path, gpuLayers: 0 });
const ctx_opts = { contextSize: 512, threads: { ideal: 1, min: 1 } };
if (lora_path) {
  // Several adapters: "a.gguf,b.gguf" with scales "0.5,1".
  const paths = lora_path.split(","), scales = String(lora_scale ?? "1").split(",");
  ctx_opts.lora = { adapters: paths.map((p, i) => ({ filePath: p, scale: Number(scales[i] ?? scales[0]) })) };
}
const context = await model.createContext(ctx_opts);
const seq = context.getSequence();
const out = [];
const n = Number(n_str);
const eos = model.tokens.eos, bos = model.tokens.bos;
for await (const t of seq.evaluate(JSON.parse(ids_json), { temperature: 0 })) {
  if (t === eos || t === bos) break;
  out.push(t);
  if (out.length >= n) break;
}
const result = { greedy: out };
const tokenize = (s) => [bos, ...model.tokenize(s, false)];
if (text !== undefined && text.startsWith("@")) {
  const { readFileSync } = await import("node:fs");
  result.tokenize = readFileSync(text.slice(1), "utf8").split("\n").map(tokenize);
} else if (text !== undefined) result.tokenize = tokenize(text);
console.log(JSON.stringify(result));
await context.dispose();
await model.dispose();
