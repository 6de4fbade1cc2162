"""The chat worker: Qwen2.5 behind the backend's chat/enhance HTTP API and the chat_queue."""
