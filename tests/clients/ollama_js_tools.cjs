// The npm `ollama` client (ollama-js) against a DX server: chat with a tool, then the tool's answer back.
// Usage: NODE_PATH=<peers>/npm-ollama-<v>/node_modules node ollama_js_tools.cjs URL KEY MODEL
// Prints one JSON line: what the client parsed.
const { Ollama } = require("ollama");

const [host, key, model] = process.argv.slice(2);
const ollama = new Ollama({ host, headers: { Authorization: `Bearer ${key}` } });
const tools = [{
  type: "function",
  function: {
    name: "get_weather",
    description: "Get the current weather in a city.",
    parameters: { type: "object", properties: { city: { type: "string", description: "The city" } }, required: ["city"] },
  },
}];
const options = { temperature: 0, seed: 7, num_predict: 96 };

async function main() {
  const messages = [{ role: "user", content: "What is the weather like in Paris right now? Use the get_weather tool." }];
  const first = await ollama.chat({ model, messages, tools, options, stream: false });
  const out = { tool_calls: first.message.tool_calls || [], content: first.message.content, done_reason: first.done_reason };
  // streaming: the tool call arrives in the chunks
  const streamed = [];
  for await (const part of await ollama.chat({ model, messages, tools, options, stream: true })) {
    for (const call of part.message.tool_calls || []) streamed.push(call);
  }
  out.streamed_tool_calls = streamed;
  if (out.tool_calls.length) {
    messages.push(first.message);
    messages.push({ role: "tool", tool_name: "get_weather", content: "It is sunny and 22 degrees in Paris." });
    const second = await ollama.chat({ model, messages, tools, options: { ...options, num_predict: 32 }, stream: false });
    out.after_tool = { content: second.message.content, tool_calls: second.message.tool_calls || [] };
  }
  const list = await ollama.list();
  out.models = list.models.map((m) => m.name);
  console.log(JSON.stringify(out));
}

main().catch((err) => {
  console.log(JSON.stringify({ error: String(err && err.message || err), status: err && err.status_code }));
  process.exit(1);
});
