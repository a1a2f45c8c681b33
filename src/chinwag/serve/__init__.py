"""chinwag.serve: the OpenAI-compatible HTTP/WebSocket server, web chat page and conversation store."""
