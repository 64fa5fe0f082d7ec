"""torchvision's ImageNet weights for the registered ImageNet classifiers and DeepLab backbones."""
import torch.nn as nn

from datafree.errors import UsageError

# Our ImageNet models have torchvision's state-dict layout: name -> (torchvision arch, weights enum).
TORCHVISION_WEIGHTS = {
    'resnet18_imagenet': ('resnet18', 'ResNet18_Weights'),
    'resnet50_imagenet': ('resnet50', 'ResNet50_Weights'),
    'mobilenetv2_imagenet': ('mobilenet_v2', 'MobileNet_V2_Weights'),
}
# DeepLab backbones initialised from those ImageNet classifiers (pretrained=True).
SEGMENTATION_BACKBONES = {'deeplabv3_resnet50': 'resnet50_imagenet', 'deeplabv3_mobilenet': 'mobilenetv2_imagenet'}


def torchvision_state_dict(name):
    import torchvision.models

    arch, weights_enum = TORCHVISION_WEIGHTS[name]
    weights = getattr(torchvision.models, weights_enum).IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=True)
    except OSError as err:
        raise UsageError(
            f"could not download torchvision's {arch} weights ({err}); without internet, "
            f"download {weights.url} elsewhere and pass it with --teacher_ckpt") from err


def load_pretrained_backbone(model, name):
    """Give the DeepLab model ``name`` the ImageNet weights of its backbone's classifier."""
    if name not in SEGMENTATION_BACKBONES:
        raise UsageError(f"there are no built-in pretrained weights for '{name}'; load a checkpoint instead")
    load_backbone(model, torchvision_state_dict(SEGMENTATION_BACKBONES[name]))


def load_backbone(model, classifier_state):
    """Copy an ImageNet classifier's weights into a DeepLab backbone (torchvision key names:
    ResNet keys as they are; MobileNetV2 'features.i' -> low_/high_level_features.i); the
    classifier's own last layers have no place in the backbone and are left out."""
    backbone = model.backbone.state_dict()
    low_blocks = getattr(model.backbone, 'LOW_LEVEL_BLOCKS', None)   # only the MobileNetV2 backbone splits
    state = {}
    for key, value in classifier_state.items():
        if low_blocks is not None and key.startswith('features.'):
            index = int(key.split('.')[1])
            part = 'low_level_features' if index < low_blocks else 'high_level_features'
            key = f"{part}.{key[len('features.'):]}"
        if key in backbone:
            state[key] = value
    missing = set(backbone) - set(state)
    if missing:
        raise UsageError(f"the ImageNet weights do not cover the backbone ({len(missing)} tensors missing, "
                         f"e.g. {sorted(missing)[0]})")
    model.backbone.load_state_dict(state)


def replace_classifier(model, num_classes):
    """A new last layer with ``num_classes`` outputs (ImageNet models built for another class count)."""
    if isinstance(getattr(model, 'fc', None), nn.Linear):
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    else:
        model.classifier[-1] = nn.Linear(model.classifier[-1].in_features, num_classes)
