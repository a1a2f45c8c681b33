"""chinwag: a hackable full-stack small-language-model system for conversational AI."""

__version__ = "0.1.0"
