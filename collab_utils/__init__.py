"""CollabLLM in notebooks: the package the stage notebooks call.

Layers, imports pointing down only:
    runs, __main__, bench
    llm (backends)
    config, cache, models, io
"""

__version__ = "0.1.0"
