"""The named configs, one module each with get_config(): --config=demo loads gptjax/configs/demo.py.

They live inside the package so that an installed gptjax (a wheel, not a checkout) has them too.
"""
