from setuptools import find_packages, setup

setup(
    name="pit",
    version="0.1.0",
    description="PIT: JAX/Flax-native self-improving language model training "
                "(PIT, Self-Rewarding LMs, SER).",
    # The repository's configs/ and data/ ship inside the package (pit.configs, pit.assets),
    # so `pit --config=configs/sft.py` works from any folder and from a wheel (pit.paths).
    packages=find_packages(include=["pit", "pit.*"]) + ["pit.configs", "pit.assets"],
    package_dir={"pit.configs": "configs", "pit.assets": "data"},
    package_data={"pit.assets": ["*.jsonl", "synthetic/*.jsonl"]},
    python_requires=">=3.10",
    install_requires=[
        "jax==0.10.2",
        "jaxlib==0.10.2",
        "flax==0.12.8",
        "optax==0.2.8",
        "orbax-checkpoint==0.12.8",
        "ml-collections>=1.1",
        "absl-py>=2.1",
        "numpy>=1.26",
        "tqdm>=4.66",
        "tensorboardX>=2.6",
        "safetensors>=0.4",
        "transformers>=5.0,<6",
        "tokenizers>=0.21",
        "sentencepiece>=0.2",
        "tensorflow-datasets>=4.9.9",
        "array-record>=0.8",
        "pyarrow>=14",  # parquet sources of the TFDS builders (also a tensorflow-datasets dependency)
        "grain>=0.2.18",
        "matplotlib>=3.8",
        "scipy>=1.11",  # evaluation intervals (pit.eval.evaluator)
        "jinja2>=3.1",  # chat templates (transformers' apply_chat_template); not a transformers dependency
        "gguf>=0.17",  # GGUF import (pit.gguf_import): reader + dequantization, no torch
    ],
    extras_require={
        # setuptools: tests/test_packaging.py builds and installs the package itself
        # accelerate: transformers' GGUF loader, the reference of tests/test_gguf.py
        # peer: `python -m pit.bench --peer=torch` (PyTorch / transformers side by side)
        "peer": ["torch==2.13.0", "accelerate>=1.0"],
        # pytest-xdist: the README's test command runs two workers (one a core on CI's 2)
        "test": ["pytest>=8", "pytest-timeout>=2.3", "pytest-xdist>=3.5", "torch==2.13.0",
                 "setuptools>=70", "accelerate>=1.0"],
    },
    entry_points={"console_scripts": ["pit=pit.main:entry"]},
)
