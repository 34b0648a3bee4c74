"""Stored data-generation turns are re-used only for the tasks and parameters that made them."""

from collab_utils import config, datagen, session

SMOKE = "params/smoke.yaml"


def test_stored_turns_made_with_other_parameters_are_rebuilt(tmp_path):
    isolated = [f"cache_path={tmp_path / 'cache.sqlite'}", f"output_dir={tmp_path}"]
    settings = [*isolated, "tasks.limit=2", "pairs.max_turns=1"]
    params = config.load(SMOKE, settings)
    roles = session.load_roles(params)
    train_tasks, _ = session.task_splits(params)
    store = params.run.datagen
    n_candidates = params.reward.n_candidates

    first = datagen.generate(train_tasks, roles, params, store, progress=False)
    assert len(first.futures) == len(train_tasks) * n_candidates * 2
    stored = params.run.datagen_turn(0).stat().st_mtime_ns

    datagen.generate(train_tasks, roles, params, store, progress=False)
    assert params.run.datagen_turn(0).stat().st_mtime_ns == stored  # same inputs: re-used

    more = config.load(SMOKE, [*settings, "reward.n_samples=3"])
    again = datagen.generate(train_tasks, roles, more, store, progress=False)
    assert len(again.futures) == len(train_tasks) * n_candidates * 3
    assert params.run.datagen_turn(0).stat().st_mtime_ns != stored
