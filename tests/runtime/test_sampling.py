"""dx run's Sampling: the options that are set, under each API's own name."""

from dx.cli.chat import Sampling


def test_unset_options_are_left_out() -> None:
    assert Sampling().openai() == {}
    assert Sampling().ollama() == {}


def test_each_api_names_the_options_its_own_way() -> None:
    s = Sampling(temperature=0.5, max_tokens=7, seed=0)
    assert s.openai() == {"temperature": 0.5, "max_tokens": 7, "seed": 0}
    assert s.ollama() == {"temperature": 0.5, "num_predict": 7, "seed": 0}
    assert Sampling(max_tokens=3).ollama() == {"num_predict": 3}
