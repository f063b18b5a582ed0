import atexit
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# the suite's embedding and semantic-ID caches live in a folder of their own, never in the user's ~/.cache
# (made only when none is given, and removed when the session ends: each run used to leave one in /tmp)
if "DEALREC_CACHE" not in os.environ:
    os.environ["DEALREC_CACHE"] = tempfile.mkdtemp(prefix="dealrec-test-cache-")
    atexit.register(shutil.rmtree, os.environ["DEALREC_CACHE"], ignore_errors=True)
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Every test uses tiny models: one torch thread is faster than two fighting over a busy
    2-core machine, and makes float results independent of the machine's core count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory):
    """A stand-in tiny BERT folder (random weights, MiniLM's tokenizer): fast, same loading path.
    Shared by the TIGER and compare tests, which build semantic IDs from item texts."""
    import shutil

    from transformers import BertConfig, BertModel

    from finetune.embed import default_encoder_dir

    folder = tmp_path_factory.mktemp("enc")
    src = default_encoder_dir()
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (src / name).exists():
            shutil.copy(src / name, folder / name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=64)).save_pretrained(folder)
    return folder
