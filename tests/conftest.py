"""8 fake CPU devices for every test (set before jax is imported)."""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA compilation cache for the session, inherited by the CLI subprocesses:
# the resume tests run the same command two or three times and compile the same programs.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import atexit
  import shutil
  import tempfile
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="pit-test-xla-cache-")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], True)

# TFDS builds made by tests (no data_dir given) go to a folder of this session, not the user's
# ~/tensorflow_datasets, and never to one another's: under pytest-xdist each worker has its own
if "TFDS_DATA_DIR" not in os.environ or os.environ.get("PIT_TEST_TFDS_OWNED"):
  import atexit
  import shutil
  import tempfile
  os.environ["TFDS_DATA_DIR"] = tempfile.mkdtemp(prefix="pit-test-tfds-")
  os.environ["PIT_TEST_TFDS_OWNED"] = "1"
  atexit.register(shutil.rmtree, os.environ["TFDS_DATA_DIR"], True)

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), "shared")


@pytest.fixture
def shared_dir():
  if not os.path.isdir(os.path.join(SHARED, "data")):
    pytest.skip(f"../shared/data not found at {SHARED}: real-data tests need the shared folder")
  return SHARED
