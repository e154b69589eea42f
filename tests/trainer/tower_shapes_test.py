"""Resuming checks only the shape options of the query tower the run uses."""
from trainer import config
from trainer.config import TrainConfig


def _cfg(**kw):
    return TrainConfig(data_dir="-", model_dir="-", **kw)


def test_the_other_towers_shape_options_do_not_refuse_a_resume():
    transformer = _cfg(query_tower="transformer")
    saved = transformer.replace(gru_units=64, gru_layers=2).flat()
    assert config.shape_mismatches(saved, transformer) == []
    gru = _cfg(query_tower="gru")
    saved = gru.replace(transformer_blocks=4, transformer_heads=4).flat()
    assert config.shape_mismatches(saved, gru) == []


def test_the_own_towers_shape_options_still_do():
    transformer = _cfg(query_tower="transformer")
    saved = transformer.replace(transformer_blocks=4).flat()
    assert config.shape_mismatches(saved, transformer) == [
        "--transformer_blocks=4 there, --transformer_blocks=2 now"]
    gru = _cfg(query_tower="gru")
    assert config.shape_mismatches(gru.replace(gru_layers=2).flat(), gru) == [
        "--gru_layers=2 there, --gru_layers=1 now"]
    # A tower change is reported as such, not as each option of the other tower.
    assert config.shape_mismatches(saved, gru) == [
        "--query_tower=transformer there, --query_tower=gru now"]
