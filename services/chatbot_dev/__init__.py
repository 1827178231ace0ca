"""Development tooling of ChatBot AI, kept out of the product package `chatbot`.

- `tiny_model` (+ `bpe`): deterministic tiny random-weight Llama-3 GGUFs for tests and for
  smoke tests of a deployment (`chatbot-dev tiny-model`);
- `recorded_search`: the `WebSearch` adapter that answers from a JSON file
  (`CHATBOT_SEARCH=recorded`; there is no internet in CI);
- `history`: a stored conversation as its MongoDB document, read from either store, for
  tests that check what was remembered.

Nothing in `chatbot` imports this package, except the composition root when
`CHATBOT_SEARCH=recorded` is configured.
"""
