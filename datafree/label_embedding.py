"""Label-text embeddings: one fixed vector per class, the input of NAYER's generator (--method nayer).

``--label_embedding`` picks the source (default ``auto``: ``clip`` where transformers is installed and
the CLIP model is on this machine, a local folder or the Hugging Face cache, else ``hash``; it never
downloads, so an offline run does not wait on the Hub):

- ``clip``: the CLIP text features of "a image of {class}" (NAYER's prompt, kept word for word;
  underscores and hyphens of a name become spaces), from transformers' CLIPTextModelWithProjection
  and CLIPTokenizer (``--clip_model``: a Hugging Face name, ``openai/clip-vit-base-patch32`` as
  NAYER used, or a local folder holding one). The features are the projected text embeddings,
  not normalised, as NAYER's own pickles hold them. Needs the dataset's class names and
  ``pip install .[clip]``.
- a file: a (num_classes, dim) array in label order, as ``.pickle``/``.pkl`` (NAYER's files: a
  pickled tensor, read here without running any code it might carry), ``.pt``/``.pth`` or ``.npy``.
- ``hash``: offline, without any model: the row of class k is a standard-normal-looking vector of
  ``HASH_DIM`` values made from the SHA-3 (SHAKE-256) digest of "k:name" (of "k" where the dataset
  names no classes), so it is the same on every machine and every library version. It carries no
  meaning: the classes are only told apart, not related to one another as CLIP's are.

``python -m datafree.label_embedding --dataset digits --source hash --out emb.pickle`` writes one to a
file (a pickled CPU tensor, the format NAYER's code reads).
"""
import argparse
import hashlib
import io
import math
import os
import pickle

import numpy as np
import torch

from datafree.errors import UsageError

AUTO = "auto"
SOURCES = (AUTO, "clip", "hash")     # anything else is the path of a file
DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
PROMPT = "a image of {}"       # NAYER's prompt, its grammar included
HASH_DIM = 512                 # CLIP ViT-B/32's text feature size
CLIP_BATCH = 100
PICKLE_SUFFIXES = (".pickle", ".pkl")
TORCH_SUFFIXES = (".pt", ".pth")
NEEDS_TRANSFORMERS = ("--label_embedding clip needs transformers: pip install .[clip] (the transformers package); "
                      "or pass --label_embedding hash, or a file")


def no_such_file(path):
    return UsageError(f"--label_embedding {path}: no such file; give 'clip', 'hash' or the path of a (classes x dim) "
                      f".pickle, .pt or .npy file")


def prompt(name):
    """NAYER's prompt for one class name."""
    return PROMPT.format(name.replace("_", " ").replace("-", " "))


def clip_available():
    import importlib.util
    return importlib.util.find_spec("transformers") is not None


def clip_on_this_machine(model_name):
    """Whether transformers is installed and ``model_name`` loads without the network (a local folder or
    a model in the Hugging Face cache)."""
    if not clip_available():
        return False
    if os.path.isdir(model_name):
        return True
    try:
        from huggingface_hub import try_to_load_from_cache
        return isinstance(try_to_load_from_cache(model_name, "config.json"), str)
    except (ImportError, ValueError):    # not a repository name either (a folder that does not exist)
        return False


def resolve_source(source, clip_model=DEFAULT_CLIP_MODEL):
    """``auto`` -> ``clip`` where the CLIP model is on this machine, else ``hash``; other sources unchanged."""
    if source != AUTO:
        return source
    return "clip" if clip_on_this_machine(clip_model) else "hash"


def clip_embeddings(names, model_name=DEFAULT_CLIP_MODEL, tokenizer=None, model=None):
    """(len(names), dim) float32 CLIP text features of the prompts of ``names``. ``tokenizer`` and
    ``model`` (a CLIPTokenizer and a CLIPTextModelWithProjection) are loaded from ``model_name``
    unless given."""
    if tokenizer is None or model is None:
        try:
            from transformers import CLIPTextModelWithProjection, CLIPTokenizer
        except ImportError:
            raise UsageError(NEEDS_TRANSFORMERS) from None
        try:
            tokenizer = tokenizer or CLIPTokenizer.from_pretrained(model_name)
            model = model or CLIPTextModelWithProjection.from_pretrained(model_name)
        except OSError as err:
            raise UsageError(f"the CLIP model '{model_name}' could not be loaded ({str(err).splitlines()[0]}); "
                             f"download it where the Hugging Face Hub is reachable, pass its local folder with "
                             f"--clip_model, or use --label_embedding hash or a file") from None
    model.eval()
    prompts = [prompt(n) for n in names]
    rows = []
    with torch.no_grad():
        for start in range(0, len(prompts), CLIP_BATCH):
            tokens = tokenizer(prompts[start:start + CLIP_BATCH], padding=True, return_tensors="pt")
            rows.append(model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).text_embeds)
    return torch.cat(rows).float()


def hash_embeddings(num_classes, names=None, dim=HASH_DIM):
    """(num_classes, dim) float32: row k from the SHAKE-256 digest of "k:name" (or "k"), turned
    into standard normal values by Box-Muller. The label index is part of the key so that two
    classes of one name (ImageNet has two 'crane's) still differ."""
    rows = []
    for k in range(num_classes):
        key = f"{k}:{names[k]}" if names is not None else str(k)
        words = np.frombuffer(hashlib.shake_256(key.encode("utf-8")).digest(4 * 2 * dim), dtype="<u4")
        uniform = (torch.from_numpy(words.astype(np.float64)) + 0.5) / 2.0 ** 32    # in (0, 1)
        u1, u2 = uniform[:dim], uniform[dim:]
        rows.append(torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2))
    return torch.stack(rows).float()


class _TensorUnpickler(pickle.Unpickler):
    """Reads a pickled tensor or numpy array and nothing else: no code a pickle names runs."""

    def find_class(self, module, name):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return torch._utils._rebuild_tensor_v2
        if (module, name) == ("torch.storage", "_load_from_bytes"):   # a storage, saved on any device
            return lambda data: torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if (module, name) == ("collections", "OrderedDict"):
            import collections
            return collections.OrderedDict
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            import importlib
            return importlib.import_module(module)._reconstruct
        if (module, name) in (("numpy", "ndarray"), ("numpy", "dtype")):
            return getattr(np, name)
        raise pickle.UnpicklingError(f"{module}.{name}")


def read_embedding_file(path):
    """The array a label-embedding file holds, as a float32 tensor (its shape unchecked)."""
    if not os.path.isfile(path):
        raise no_such_file(path)
    suffix = os.path.splitext(path)[1].lower()
    try:
        if suffix in PICKLE_SUFFIXES:
            with open(path, "rb") as f:
                value = _TensorUnpickler(f).load()
        elif suffix in TORCH_SUFFIXES:
            value = torch.load(path, map_location="cpu", weights_only=True)
        elif suffix == ".npy":
            value = np.load(path, allow_pickle=False)
        else:
            raise UsageError(f"--label_embedding {path}: unknown file type '{suffix}'; give a .pickle, .pkl, .pt, "
                             f".pth or .npy file")
    except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError) as err:
        raise UsageError(f"--label_embedding {path} holds no plain tensor or array ({err}); save the embedding "
                         f"as a (classes x dim) .pt or .npy file") from None
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value.copy())
    if not torch.is_tensor(value):
        raise UsageError(f"--label_embedding {path} holds a {type(value).__name__}, not a (classes x dim) "
                         f"tensor or array")
    return value.detach().float()


def label_embeddings(source, num_classes, class_names=None, clip_model=DEFAULT_CLIP_MODEL, dataset="the data"):
    """The (num_classes, dim) float32 embedding of ``source`` ('auto', 'clip', 'hash' or a file path);
    ``class_names`` in label order, where the dataset names its classes."""
    if source == AUTO:
        source = resolve_source(source, clip_model) if class_names is not None else "hash"
    if class_names is not None and len(class_names) != num_classes:
        raise UsageError(f"{dataset} names {len(class_names)} classes but has {num_classes}")
    if source == "hash":
        return hash_embeddings(num_classes, class_names)
    if source == "clip":
        if class_names is None:
            raise UsageError(f"--label_embedding clip needs class names, and {dataset} registers none; give "
                             f"--label_embedding a (classes x dim) file, or hash")
        embedding = clip_embeddings(class_names, clip_model)
    else:
        embedding = read_embedding_file(source)
    if embedding.dim() != 2 or embedding.shape[0] != num_classes:
        raise UsageError(f"--label_embedding {source} gives an embedding of shape {tuple(embedding.shape)}, but "
                         f"{dataset} has {num_classes} classes: give one row per class, in label order")
    if not bool(torch.isfinite(embedding).all()):
        raise UsageError(f"--label_embedding {source} holds NaN or infinite values")
    return embedding


def check_source(source):
    """Refuse, before anything is built, a source that cannot work here (one sentence)."""
    if source == "clip" and not clip_available():
        raise UsageError(NEEDS_TRANSFORMERS)
    if source not in SOURCES and not os.path.isfile(source):
        raise no_such_file(source)


def write_embedding(embedding, path):
    """Save ``embedding`` as ``path``'s suffix says: a pickled CPU tensor (.pickle/.pkl, what
    NAYER's code reads), a torch file (.pt/.pth) or a numpy array (.npy)."""
    suffix = os.path.splitext(path)[1].lower()
    embedding = embedding.detach().cpu().float().contiguous()
    if suffix in PICKLE_SUFFIXES:
        with open(path, "wb") as f:
            pickle.dump(embedding, f)
    elif suffix in TORCH_SUFFIXES:
        torch.save(embedding, path)
    elif suffix == ".npy":
        np.save(path, embedding.numpy())
    else:
        raise UsageError(f"--out {path}: give a .pickle, .pkl, .pt, .pth or .npy file")


def main(argv=None):
    from datafree import registry

    parser = argparse.ArgumentParser(description="Write a dataset's label embedding to a file.")
    parser.add_argument("--dataset", required=True, choices=registry.dataset_names())
    parser.add_argument("--source", default="hash", metavar="auto|clip|hash|FILE",
                        help="auto, clip, hash or a file, as --label_embedding (default: %(default)s)")
    parser.add_argument("--clip_model", default=DEFAULT_CLIP_MODEL)
    parser.add_argument("--out", required=True, help=".pickle (NAYER's format), .pt or .npy")
    args = parser.parse_args(argv)
    check_source(args.source)
    embedding = label_embeddings(args.source, registry.DATASET_NUM_CLASSES[args.dataset],
                                 registry.class_names(args.dataset), args.clip_model, args.dataset)
    write_embedding(embedding, args.out)
    print(f"wrote the {args.source} label embedding of {args.dataset}, shape {tuple(embedding.shape)}, to {args.out}")


if __name__ == "__main__":
    import sys

    from datafree.utils.cli import run_cli
    run_cli(main, sys.argv[1:])
