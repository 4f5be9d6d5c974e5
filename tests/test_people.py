"""The fictitious-people world: deterministic under a seed, split by person, answers in Q/A."""

from __future__ import annotations

import pytest

from expunge.data.people import QUESTIONS, fictitious_people, split_people, world_examples
from expunge.errors import ConfigError
from expunge.imprints.knowledge import KnowledgeImprint


def test_same_seed_same_world_other_seed_other_world() -> None:
    assert fictitious_people(30, seed=4) == fictitious_people(30, seed=4)
    assert fictitious_people(30, seed=4) != fictitious_people(30, seed=5)
    names = [p.name for p in fictitious_people(200, seed=0)]
    assert len(set(names)) == 200


def test_every_qa_answer_is_in_its_response_and_bio() -> None:
    for person in fictitious_people(20, seed=1):
        qa = person.qa()
        assert [e.meta["attribute"] for e in qa] == list(QUESTIONS)
        bio = person.bio().text or ""
        for example in qa:
            assert example.meta["answer"] in (example.response or "")
            assert example.meta["answer"] in bio
            assert person.name in (example.prompt or "")


def test_split_is_by_person_seeded_and_sized() -> None:
    people = fictitious_people(50, seed=2)
    forget, keep = split_people(people, 0.1, seed=2)
    assert len(forget) == 5 and len(keep) == 45
    assert {p.index for p in forget}.isdisjoint(p.index for p in keep)
    assert split_people(people, 0.1, seed=2) == (forget, keep)
    assert split_people(people, 0.1, seed=3) != (forget, keep)
    imprint = KnowledgeImprint.synthetic_people(50, 0.1, seed=2, bios=True)
    forget_people = {e.meta["person"] for e in imprint.forget}
    assert forget_people == {p.index for p in forget} == set(imprint.origin["forget_people"])
    assert forget_people.isdisjoint(e.meta["person"] for e in imprint.retain)
    assert len(imprint.forget) == 5 * (1 + len(QUESTIONS))  # a bio and 5 Q/A per person
    assert len(world_examples(people)) == 50 * (1 + len(QUESTIONS))


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1])
def test_bad_ratio_or_size_is_a_config_error(ratio: float) -> None:
    with pytest.raises(ConfigError, match="forget_ratio"):
        split_people(fictitious_people(5), ratio)
    with pytest.raises(ConfigError, match="at least one person"):
        fictitious_people(0)
