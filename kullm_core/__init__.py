"""Platform-neutral core of kullm-chat: store, queue, prompt, engines and the worker."""

__version__ = "0.1.0"
