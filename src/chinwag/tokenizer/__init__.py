"""chinwag.tokenizer"""
