"""Engines implementing `chatbot.core.ports.ChatEngine`: llama.cpp (one request at a time,
`llama_engine`, or batched, `batched_engine`) and OpenAI or any OpenAI-compatible endpoint
(`openai_engine`, the GPT routes); model loading and the bundled default model."""
