"""The rules of the ``auto`` space (spaces/derive.py): what each fact of the data and the budget changes."""

from __future__ import annotations

from spaces.derive import Budget, DataFacts, derive_space

DIGITS_28 = DataFacts(channels=1, height=28, width=28, classes=10, train_images=4000, blank_fraction=0.9)
PHOTOS_32 = DataFacts(channels=3, height=32, width=32, classes=10, train_images=4000, blank_fraction=0.05)
BUDGET = Budget(seconds=240.0, trials=None, workers=1, epoch_seconds=1.5, measured_on="cpu, 2 threads")


def _range(space, name: str) -> tuple:
    param = space.params.get(name)
    if param is None:
        return (space.fixed[name],)
    return param.options() if param.type in ("bool", "categorical") else (param.low, param.high)


def test_colour_photos_get_more_stages_wider_filters_flips_and_larger_crops_than_grayscale_digits() -> None:
    digits, photos = derive_space(DIGITS_28, BUDGET).space, derive_space(PHOTOS_32, BUDGET).space
    assert _range(digits, "depth") == (1, 3) and _range(photos, "depth") == (2, 4)  # 28 px: 3 halvings, 32 px: 4
    assert _range(digits, "width") == (8, 32) and _range(photos, "width") == (16, 64)  # colour: base 32, not 16
    assert _range(digits, "aug_flip") == (False,) and _range(photos, "aug_flip") == (False, True)
    assert _range(digits, "aug_translate") == (0, 3) and _range(photos, "aug_translate") == (0, 4)
    assert [p.get("aug_flip") for p in photos.start] == [True]  # photos start flipped
    assert all("aug_flip" not in p for p in digits.start)


def test_grayscale_that_is_not_glyph_like_searches_flips_but_starts_without() -> None:
    gray = DataFacts(channels=1, height=28, width=28, classes=10, train_images=4000, blank_fraction=0.2)
    space = derive_space(gray, BUDGET).space
    assert _range(space, "aug_flip") == (False, True)
    assert [p.get("aug_flip") for p in space.start] == [False]


def test_few_images_per_class_reach_for_more_regularisation() -> None:
    few = DataFacts(channels=1, height=28, width=28, classes=10, train_images=900, blank_fraction=0.9)
    many, little = derive_space(DIGITS_28, BUDGET).space, derive_space(few, BUDGET).space
    assert _range(many, "dropout")[1] < _range(little, "dropout")[1]
    assert _range(many, "weight_decay")[1] < _range(little, "weight_decay")[1]
    assert _range(many, "label_smoothing")[1] < _range(little, "label_smoothing")[1]
    assert _range(little, "width") == (4, 16)  # fewer than 1,000 training images: half the base width


def test_a_long_budget_trains_longer_than_a_short_one() -> None:
    short = derive_space(DIGITS_28, Budget(60.0, None, 1, 1.5, "cpu")).space
    long = derive_space(DIGITS_28, Budget(3600.0, None, 1, 1.5, "cpu")).space
    assert _range(short, "epochs")[1] < _range(long, "epochs")[1]  # the top is also Hyperband's maximum
    assert _range(short, "epochs")[0] < _range(long, "epochs")[0]
    assert [p["epochs"] for p in long.start] == [125]  # the start point: the middle of the epoch range


def test_a_trial_may_take_four_times_the_median_network_at_the_top_epochs_unless_the_user_says() -> None:
    assert derive_space(DIGITS_28, Budget(3600.0, None, 1, 1.5, "cpu")).trial_timeout == 4 * 200 * 1.5
    assert derive_space(DIGITS_28, Budget(100.0, None, 1, 1.5, "cpu")).trial_timeout == 120  # at least two minutes
    # A machine too slow for the budget: the range is clamped up to 3 epochs, and the timeout lets them train.
    assert derive_space(DIGITS_28, Budget(200.0, None, 1, 97.0, "cpu")).trial_timeout == 4 * 3 * 97
    assert derive_space(DIGITS_28, Budget(None, 20, 1, 1.5, "cpu")).trial_timeout is None  # --trials alone
    given = derive_space(DIGITS_28, Budget(3600.0, None, 1, 1.5, "cpu", trial_timeout=12.5))
    assert given.trial_timeout == 12.5 and "  trial timeout 12.5 s: --trial-timeout, as given" in given.lines()


def test_the_epochs_and_the_trial_timeout_are_sized_by_the_drawn_networks_pace_when_they_were_timed() -> None:
    median_only = derive_space(DIGITS_28, Budget(240.0, None, 1, 1.5, "cpu"))
    drawn = derive_space(DIGITS_28, Budget(240.0, None, 1, 1.5, "cpu", typical_epoch_seconds=3.0, typical_draws=6))
    assert _range(median_only.space, "epochs") == (5, 20)  # 240 s / (8 x 1.5 s)
    assert _range(drawn.space, "epochs") == (2, 10)  # 240 s / (8 x 3 s): a typical trial, twice as slow
    assert drawn.lines()[0].endswith("the median network trains an epoch in 1.5 s, 6 drawn from the space a "
                                     "median 3 s (2.0x) on cpu)")
    assert ("  epochs 2-10, Hyperband maximum 10: a full-length typical trial takes 1/8 of 240 s at 3 s/epoch"
            in drawn.lines())
    long = derive_space(DIGITS_28, Budget(3600.0, None, 1, 1.5, "cpu", typical_epoch_seconds=3.0, typical_draws=6))
    assert long.trial_timeout == 4 * 150 * 3.0  # 4x a typical trial's top epochs (3600 s / (8 x 3 s) = 150)
    assert "4x a typical network's 150 epochs" in long.lines()[7]


def test_more_workers_and_a_faster_machine_train_longer_in_the_same_time() -> None:
    one = derive_space(DIGITS_28, Budget(240.0, None, 1, 1.5, "cpu")).space
    four = derive_space(DIGITS_28, Budget(240.0, None, 4, 1.5, "cpu")).space
    faster = derive_space(DIGITS_28, Budget(240.0, None, 1, 0.5, "cpu")).space
    assert _range(one, "epochs")[1] < _range(four, "epochs")[1]
    assert _range(one, "epochs")[1] < _range(faster, "epochs")[1]


def test_each_decision_is_one_short_line_after_the_facts_it_was_made_from() -> None:
    lines = derive_space(PHOTOS_32, BUDGET).lines()
    assert lines[0].startswith("space auto: derived from the data (32x32 px, 3 channels, 10 classes, 4,000 "
                               "training images) and the budget (240 s left, 1 worker;")
    decisions = [line.strip() for line in lines[1:]]
    assert [d.split(":")[0].split(" ")[0] for d in decisions] == [
        "stages", "first", "width", "dropout", "flips", "epochs", "trial", "1", "first"]
    assert all("\n" not in d and len(d) < 160 for d in decisions)


def photos(side: int) -> DataFacts:
    return DataFacts(channels=3, height=side, width=side, classes=10, train_images=4000, blank_fraction=0.05)


def test_larger_images_get_a_strided_first_layer_and_stages_counted_on_the_map_after_it() -> None:
    for side, stride, stages, mapped in [(32, 1, (2, 4), 32), (64, 1, (2, 4), 64), (100, 2, (2, 4), 50),
                                         (128, 2, (2, 4), 64), (224, 4, (2, 4), 56), (12, 1, (1, 2), 12)]:
        derivation = derive_space(photos(side), BUDGET)
        space = derivation.space
        assert space.fixed["stem_stride"] == stride and "stem_stride" not in space.params  # fixed, not searched
        assert _range(space, "depth") == stages
        lines = [line.strip() for line in derivation.lines()]
        first = next(line for line in lines if line.startswith("first layer"))
        assert first.startswith(f"first layer stride {stride}: ")
        if stride > 1:
            assert f"{mapped}-px map" in first and f"({mapped} px after the first layer)" in lines[1]
        assert space.config_from_params(space.start[0]).stem_stride == stride  # the start point (the timed network)


def test_the_first_drawn_trial_trains_the_low_end_of_the_epoch_range() -> None:
    derivation = derive_space(PHOTOS_32, BUDGET)
    low, high = _range(derivation.space, "epochs")
    assert low < high and derivation.space.low_cost == {"epochs": low}
    assert derivation.space.start[0]["epochs"] > low  # the start point trains the middle
    line = next(line.strip() for line in derivation.lines() if line.strip().startswith("first drawn"))
    assert line.startswith(f"first drawn trial: {low} epochs: the range's low end")
