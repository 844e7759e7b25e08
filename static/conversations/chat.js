// A minimal reader for the GET stream; the full chat UI replaces it.
const form = document.getElementById("composer");
const input = document.getElementById("message");
const transcript = document.getElementById("transcript");
let conversationId = null;

function addMessage(role, text) {
  const node = document.createElement("div");
  node.className = `message ${role}`;
  node.textContent = text;
  transcript.append(node);
  return node;
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = input.value.trim();
  if (!text) return;
  input.value = "";
  addMessage("user", text);
  const reply = addMessage("assistant", "");
  const params = new URLSearchParams({ message: text });
  if (conversationId) params.set("conversation_id", conversationId);
  const source = new EventSource(`/api/chat/stream?${params}`);
  source.onmessage = (message) => {
    if (message.data === "[DONE]") { source.close(); return; }
    reply.textContent += JSON.parse(message.data);
  };
  source.addEventListener("error", (message) => {
    source.close();
    if (message.data) reply.textContent += `\n[error] ${JSON.parse(message.data).message}`;
  });
});
