"""A flat or nested folder of images without labels (a transfer set, or synthetic images)."""
import os

import torch
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class UnlabeledImageFolder(torch.utils.data.Dataset):
    """Every image under ``root`` (searched recursively, sorted); yields (image, -1)."""

    def __init__(self, root, transform=None):
        self.root = root
        self.files = sorted(
            os.path.join(dirpath, name)
            for dirpath, _, names in os.walk(root)
            for name in names if name.lower().endswith(IMAGE_EXTENSIONS))
        if not self.files:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}")
        self.transform = transform

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        with Image.open(self.files[index]) as image:
            image = image.convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, -1


def load_image_tensor(root, size):
    """Every image under ``root`` as one float tensor (N, 3, size, size) in [0, 1]."""
    from torchvision import transforms as T

    folder = UnlabeledImageFolder(root, transform=T.Compose([T.Resize((size, size)), T.ToTensor()]))
    return torch.stack([folder[i][0] for i in range(len(folder))])
