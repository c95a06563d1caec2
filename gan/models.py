"""Import the built-in models so their ``@register_generator`` decorators run."""

from gan import cyclegan, dcgan, pix2pix  # noqa: F401
