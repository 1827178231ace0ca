"""Development tooling of ChatBot AI, kept out of the product package `chatbot` (and out of
the images).

- `tiny_model` (+ `bpe`): deterministic tiny random-weight Llama-3 GGUFs for tests and for
  smoke tests of a deployment (`chatbot-dev tiny-model`).

Nothing in `chatbot` imports this package.
"""
