"""NYUv2 semantic segmentation with 13 classes, in the original release's folder layout.

    NYUv2/
      image/train/*.png   795 RGB images       image/test/*.png   654 RGB images
      seg13/train/*.png   label maps, same file names as the images (8-bit, one channel):
      seg13/test/*.png    0 = unlabelled, 1..13 = the 13 classes

Labels are mapped to 0..12 and the unlabelled 0 to the ignore index 255.
"""
import os
import warnings

import numpy as np
import torch
from PIL import Image

from datafree.errors import DatasetNotFoundError, UsageError

from .registry import register_dataset
from .seg_transforms import segmentation_transforms

NYUV2_NUM_CLASSES = 13
NYUV2_SPLIT_SIZES = {"train": 795, "test": 654}
NYUV2_CLASSES = ("bed", "books", "ceiling", "chair", "floor", "furniture", "objects", "picture",
                 "sofa", "table", "tv", "wall", "window")
LAYOUT = ("NYUv2/image/{train,test}/*.png with label maps of the same names in "
          "NYUv2/seg13/{train,test}/ (0 = unlabelled, 1-13 = classes); see docs/segmentation.md")


def label_lut(ignore_index=255):
    """uint8 look-up table: 0 -> ignore_index, k -> k - 1 for k = 1..13, anything else -> ignore_index."""
    lut = np.full(256, ignore_index, dtype=np.uint8)
    lut[1:NYUV2_NUM_CLASSES + 1] = np.arange(NYUV2_NUM_CLASSES, dtype=np.uint8)
    return lut


class NYUv2(torch.utils.data.Dataset):
    """The train or test split; yields ``transforms(PIL image, PIL mask)``."""

    num_classes = NYUV2_NUM_CLASSES

    def __init__(self, root, split="train", transforms=None, ignore_index=255):
        if split not in NYUV2_SPLIT_SIZES:
            raise ValueError(f"split must be 'train' or 'test', not {split!r}")
        image_dir = os.path.join(root, "image", split)
        label_dir = os.path.join(root, "seg13", split)
        for folder in (image_dir, label_dir):
            if not os.path.isdir(folder):
                raise DatasetNotFoundError(f"NYUv2 is not at {folder}; put it there as {LAYOUT}")
        names = sorted(f for f in os.listdir(image_dir) if f.lower().endswith(".png"))
        if not names:
            raise DatasetNotFoundError(f"{image_dir} holds no .png images; expected {LAYOUT}")
        missing = [n for n in names if not os.path.isfile(os.path.join(label_dir, n))]
        if missing:
            raise DatasetNotFoundError(f"{len(missing)} NYUv2 {split} images have no label map in {label_dir} "
                                       f"(e.g. {missing[0]}); every image needs one of the same name")
        if len(names) != NYUV2_SPLIT_SIZES[split]:
            warnings.warn(f"NYUv2 {split} split at {image_dir} has {len(names)} images, "
                          f"not the usual {NYUV2_SPLIT_SIZES[split]}")
        self.images = [os.path.join(image_dir, n) for n in names]
        self.targets = [os.path.join(label_dir, n) for n in names]
        self.transforms = transforms
        self.lut = label_lut(ignore_index)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        image = Image.open(self.images[index]).convert("RGB")
        raw = np.array(Image.open(self.targets[index]))
        if raw.ndim != 2:
            raise ValueError(f"{self.targets[index]} is not a one-channel label map")
        mask = Image.fromarray(self.lut[raw.astype(np.uint8)], mode="L")
        if self.transforms is not None:
            image, mask = self.transforms(image, mask)
        return image, mask


# As the original release: images resized to a shorter side of 256 and 128x128 training
# crops; ours also draws a random scale in [0.5, 2] before the crop. Test images are the
# whole resized image (256 x 341).
NYUV2_BASE_SIZE, NYUV2_CROP_SIZE, NYUV2_SCALE = 256, 128, (0.5, 2.0)
NYUV2_MEAN = NYUV2_STD = (0.5, 0.5, 0.5)


@register_dataset('nyuv2', num_classes=NYUV2_NUM_CLASSES, task='segmentation', ignore_index=255,
                  mean=NYUV2_MEAN, std=NYUV2_STD)
def build_nyuv2(data_root, download=False):
    if download:
        raise UsageError("NYUv2 cannot be downloaded by this project; put it in place as docs/segmentation.md says "
                         "and drop --download")
    root = os.path.join(data_root, 'NYUv2')
    train_tf, val_tf = segmentation_transforms(NYUV2_MEAN, NYUV2_STD, crop_size=NYUV2_CROP_SIZE,
                                               base_size=NYUV2_BASE_SIZE, scale=NYUV2_SCALE)
    return NYUv2(root, 'train', transforms=train_tf), NYUv2(root, 'test', transforms=val_tf)
