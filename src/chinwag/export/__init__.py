"""chinwag.export: write a run in other ecosystems' formats (Hugging Face `LlamaForCausalLM`)."""


def export_hf(*args, **kwargs):
    from chinwag.export.hf import export_hf as _export

    return _export(*args, **kwargs)


export_hf.__doc__ = "See chinwag.export.hf.export_hf."
