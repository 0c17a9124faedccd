"""The one input path from files to model feeds: image folders (listing, suffixes, safe
decoding with a pixel limit, preprocessing) and .npy/.npz tensors, served as batches.
`compare` and `calib` both read their data through here.

    from maedet_deploy.inputs import ImageBatches, PreprocessSpec, list_images, resolve_image_input
    model_input, spec, channels = resolve_image_input(inputs, PreprocessSpec(resize="letterbox"))
    for batch in ImageBatches(list_images("images/"), model_input, spec, channels):
        runner.infer(batch.feed)
"""

from .batches import (Batch, ImageBatches, TensorBatches, batch_groups, declared_size, is_float, resolve_image_input,
                      static_dim, tensor_batches)
from .images import IMAGE_SUFFIXES, check_readable, list_images, open_image
from .preprocess import ImageMeta, PreprocessSpec, load_image, load_spec, parse_size, spec_from_mapping
from .tensors import TENSOR_SUFFIXES, load_arrays

__all__ = ["Batch", "ImageBatches", "TensorBatches", "batch_groups", "declared_size", "is_float",
           "resolve_image_input", "static_dim", "tensor_batches",
           "IMAGE_SUFFIXES", "check_readable", "list_images", "open_image",
           "ImageMeta", "PreprocessSpec", "load_image", "load_spec", "parse_size", "spec_from_mapping",
           "TENSOR_SUFFIXES", "load_arrays"]
