//! The LLM client: OpenAI-compatible and Anthropic providers, with retries, rate limits,
//! streaming and validators.
