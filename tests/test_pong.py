"""Pong (protocols/pong.py): the game's physics without a device, and its rules on the
simulated culture through `mea-control run` (the recording's pulses and decisions)."""

import json

import numpy as np
import pytest
from conftest import cli_batch, run_paused

from mea_control import recording
from mea_control.layouts import load_layout
from mea_control.protocol import ProtocolError, load_protocol
from protocols.pong import Game, _auto_sets, _fold

FS = 25_000
#: Short games: a fast ball, a 1 s miss feedback, 40 s of play.
SHORT = ["--param", "ball_speed=1.0", "--param", "miss_s=1.0"]
MISS_S = 1.0
HIT_PULSES = 10  # 100 Hz for 100 ms


class Seq:
    """A stand-in for the rng of Game.serve: fixed draws."""

    def __init__(self, *draws):
        self.draws = list(draws)

    def uniform(self, lo, hi):
        return self.draws.pop(0)


# -- the physics -----------------------------------------------------------------------------
def test_fold_reflects_into_the_court():
    assert _fold(0.3) == (0.3, False)
    assert _fold(1.2) == pytest.approx((0.8, True))
    assert _fold(-0.2) == pytest.approx((0.2, True))
    assert _fold(-1.2) == pytest.approx((0.8, False))  # off the bottom, then the top


def test_ball_bounces_off_the_walls():
    game = Game(ball_speed=0.5)
    game.serve(Seq(0.9, 1.0))  # y = 0.9, heading for the paddle and up
    assert (game.ball_x, game.vx, game.vy) == (0.5, -0.5, 0.5)
    assert game.step(0.4) is None  # y 0.9 + 0.2 -> off the top wall to 0.9
    assert game.ball_y == pytest.approx(0.9) and game.vy < 0
    game.ball_x, game.vx = 0.9, 0.5  # towards the far wall
    assert game.step(0.4) is None
    assert game.ball_x == pytest.approx(0.9) and game.vx < 0


def test_hit_returns_the_ball_and_counts_the_rally():
    game = Game(paddle_size=0.2, ball_speed=1.0)
    game.serve(Seq(0.5, 0.0))  # straight at the paddle's middle
    game.paddle_y = 0.55
    assert game.step(0.4) is None
    assert game.step(0.2) == "hit"
    assert game.ball_x == pytest.approx(0.1) and game.vx > 0
    assert (game.hits, game.rally, game.misses) == (1, 1, 0)


def test_hit_is_judged_where_the_ball_crosses_the_paddle_line():
    """A ball that crosses at y = 0.3 and ends the frame at 0.5 misses a paddle at 0.5."""
    game = Game(paddle_size=0.1, ball_speed=1.0)
    game.ball_x, game.ball_y, game.vx, game.vy = 0.1, 0.2, -1.0, 1.0
    game.paddle_y = 0.5
    assert game.step(0.3) == "miss"
    assert game.ball_y == pytest.approx(0.3) and not game.in_play


def test_miss_ends_the_rally_and_an_ace_is_a_first_ball_missed():
    game = Game(paddle_size=0.1, ball_speed=1.0)
    game.paddle_y = 0.05
    for _ in range(2):  # two aces
        game.serve(Seq(0.8, 0.0))
        assert game.step(0.6) == "miss"
    game.serve(Seq(0.05, 0.0))
    assert game.step(0.6) == "hit"
    game.ball_y = 0.8  # away from the paddle: the returned ball is missed
    assert game.step(0.7) is None  # to x = 0.8
    assert game.step(0.5) is None  # off the far wall, back to 0.7
    assert game.step(0.8) == "miss"
    assert game.step(1.0) is None  # the ball waits for its serve
    assert (game.hits, game.misses, game.aces, game.rallies) == (1, 3, 2, [0, 0, 1])


def test_paddle_stays_in_the_court():
    game = Game(paddle_size=0.2)
    game.move_paddle(5.0)
    assert game.paddle_y == pytest.approx(0.9)
    game.move_paddle(-5.0)
    assert game.paddle_y == pytest.approx(0.1)


# -- electrodes ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["grid8x8_200um", "mcs60mea200"])
def test_auto_sets_are_apart(name):
    layout = load_layout(name)
    recording_chans = [c for c in range(layout.n_electrodes)
                       if c not in layout.ground and c not in layout.reference]
    sensory, up, down = _auto_sets(layout, recording_chans,
                                   lambda ch: bool(layout.can_stimulate[ch]))
    x = layout.positions_um[:, 0]
    y = layout.positions_um[:, 1]
    assert len(sensory) == 8 and len(set(sensory)) == 8
    assert list(y[sensory]) == sorted(y[sensory])  # along the paddle axis
    assert up and down and not set(up) & set(down)
    assert x[sensory].max() < min(x[up].min(), x[down].min())
    assert y[up].min() > y[down].max()


def test_electrodes_file_and_parameters(tmp_path):
    cls, _ = load_protocol("pong")
    path = tmp_path / "electrodes.json"
    path.write_text(json.dumps({"sensory": ["11", "12"], "motor_up": "87, 88",
                                "motor_down": ["81"]}))
    assert cls(electrodes_file=str(path))._given_sets() == {
        "sensory": ["11", "12"], "motor_up": "87, 88", "motor_down": ["81"]}  # as given
    with pytest.raises(ProtocolError, match="sensory is given both"):
        cls(electrodes_file=str(path), sensory="13,14")._given_sets()
    with pytest.raises(ProtocolError, match="electrodes_file"):
        cls(electrodes_file=str(tmp_path / "missing.json"))._given_sets()


def _batch_errors(*params):
    argvs = [["run", "pong", "--fast", "--quiet", "--duration", "1", "--param", p]
             for p in params]
    return [err for _, err, _ in cli_batch(argvs)]


def test_bad_sets_and_limits_are_refused_at_start():
    """Amplitudes and rates above the limits name the parameter; overlapping sets and
    unknown labels name the set."""
    errors = _batch_errors("amplitude=20", "miss_amplitude=12", "hit_rate_hz=300",
                           "sense_max_hz=60", "motor_up=18,28", "sensory=11,99")
    assert "max_current_uA" in errors[0] and "set by amplitude = 20" in errors[0]
    assert "set by miss_amplitude = 12" in errors[1]
    assert "burst_rate_hz" in errors[2] and "set by hit_rate_hz = 300" in errors[2]
    assert "mean_rate_hz" in errors[3] and "set by sense_max_hz = 60" in errors[3]
    assert "sensory and motor_up share electrode(s) 18" in errors[4]
    assert "sensory:" in errors[5] and "'99'" in errors[5]


# -- on the simulated culture ----------------------------------------------------------------
@pytest.fixture(scope="module")
def games(tmp_path_factory):
    """One 40 s game in each condition (seed 1), recorded: condition -> (summary, pulses,
    frame decisions)."""
    folder = tmp_path_factory.mktemp("pong")
    conditions = ("stimulus", "silent", "no_feedback", "rest")
    argvs = [["run", "pong", "--device", "sim://?seed=1", "--fast", "--quiet",
              "--duration", "40", *SHORT, "--param", f"condition={c}",
              "--record", str(folder / f"{c}.nwb"), "--no-raw",
              "--summary-json", str(folder / f"{c}.json")] for c in conditions]
    for code, err, _ in cli_batch(argvs, timeout=600):
        assert code == 0, err
    out = {}
    for c in conditions:
        summary = json.loads((folder / f"{c}.json").read_text())["protocol_summary"]
        with recording.open(folder / f"{c}.nwb") as rec:
            pulses = {k: np.asarray(v) for k, v in rec.pulses.items()
                      if k in ("pattern_label", "decision_sample", "electrode", "status",
                               "train_pulse")}
            frames = [d for d in rec.decisions if d["details"].get("kind") == "frame"]
        out[c] = summary, pulses, frames
    return out


def test_frames_keep_time_on_a_device_that_streams_spikes_only(tmp_path):
    """The game moves on the device's clock (on_clock), not when spikes happen to come:
    one frame every 40 ms of device samples, each taken at its sample."""
    nwb, summary = tmp_path / "pong.nwb", tmp_path / "pong.json"
    [(code, err, _)] = cli_batch([["run", "pong", "--device", "sim://?seed=1&raw=0", "--fast",
                                   "--quiet", "--duration", "10", *SHORT, "--record", str(nwb),
                                   "--summary-json", str(summary)]], timeout=600)
    assert code == 0, err
    with recording.open(nwb) as rec:
        frames = [d["sample"] for d in rec.decisions if d["details"].get("kind") == "frame"]
    assert len(frames) >= 249 and set(np.diff(frames)) == {FS // 25}
    played = json.loads(summary.read_text())["protocol_summary"]
    assert played["rallies"] >= 1 and played["pulses_sent"]["sense"] > 0


def _events(frames, kind):
    return [d["sample"] for d in frames if d["details"]["event"] == kind]


def _executed(pulses, label):
    ok = (pulses.get("status", np.array([])) == "executed") & \
        (pulses.get("pattern_label", np.array([])) == label)
    return {k: v[ok] for k, v in pulses.items()}


def test_stimulus_hits_get_the_predictable_train_and_misses_the_unpredictable(games):
    summary, pulses, frames = games["stimulus"]
    hits, misses = _events(frames, "hit"), _events(frames, "miss")
    assert len(hits) >= 1 and len(misses) >= 2
    assert (summary["hits"], summary["misses"]) == (len(hits), len(misses))
    assert summary["pulses_refused"] == {} and set(pulses["status"]) == {"executed"}
    layout = load_layout("grid8x8_200um")  # sim://'s
    sensory = {layout.channel(label) for label in summary["sensory"]}
    train = _executed(pulses, "hit")
    # every hit: 10 pulses on each sensory electrode, decided at the hit's frame
    assert sorted(set(train["decision_sample"])) == hits
    for sample in hits:
        at = train["decision_sample"] == sample
        assert set(train["electrode"][at]) == sensory
        assert sorted(train["train_pulse"][at]) == sorted(list(range(HIT_PULSES)) * len(sensory))
    # every miss: pulses on sensory electrodes within miss_s after it, none elsewhere
    miss = _executed(pulses, "miss")
    window = int(MISS_S * FS)
    after = [(miss["decision_sample"] >= m) & (miss["decision_sample"] <= m + window)
             for m in misses]
    assert all(np.any(a) for a in after)
    assert np.all(np.any(after, axis=0))
    assert set(miss["electrode"]) <= sensory
    # the ball is not encoded while it waits for its serve
    sense = _executed(pulses, "sense")
    serves = _events(frames, "serve")
    for m in misses:
        serve = min(s for s in serves + [10**12] if s > m)
        assert not np.any((sense["decision_sample"] > m) & (sense["decision_sample"] < serve))
    assert set(sense["electrode"]) <= sensory and len(set(sense["electrode"])) > 1


def test_silent_and_no_feedback_send_only_the_sensory_input(games):
    for condition in ("silent", "no_feedback"):
        summary, pulses, frames = games[condition]
        assert set(pulses["pattern_label"]) == {"sense"}, condition
        assert summary["misses"] >= 2 and set(summary["pulses_sent"]) == {"sense"}
    # silent: the ball waits miss_s after a miss; no_feedback: served at the next frame
    frame = FS / 25
    for condition, wait in (("silent", MISS_S * FS), ("no_feedback", frame)):
        _, _, frames = games[condition]
        misses, serves = _events(frames, "miss"), _events(frames, "serve")
        for m in misses[:-1]:
            serve = min(s for s in serves if s > m)
            assert wait <= serve - m <= wait + frame, condition


def test_rest_sends_no_pulse_and_still_plays(games):
    summary, pulses, frames = games["rest"]
    assert len(pulses.get("status", [])) == 0
    assert summary["pulses_sent"] == {} and summary["misses"] >= 2
    moves = np.array([d["choice"] for d in frames])
    assert np.count_nonzero(moves > 0) and np.count_nonzero(moves < 0)  # activity drives it
    assert all(d["details"]["up"] + d["details"]["down"] >= 0 for d in frames)
    # one frame every 1/25 s of device samples, stamped with the sample
    samples = np.array([d["sample"] for d in frames])
    assert np.all(np.diff(samples) == FS // 25)


def test_summary_counts_agree_with_the_frames(games):
    for condition, (summary, _, frames) in games.items():
        last = frames[-1]["details"]
        assert (summary["hits"], summary["misses"], summary["aces"]) == \
            (last["hits"], last["misses"], last["aces"]), condition
        aces = 0
        rally = 0
        for d in frames:
            event = d["details"]["event"]
            if event == "hit":
                rally += 1
            elif event == "miss":
                aces += rally == 0
                rally = 0
        assert aces == summary["aces"], condition


class FakeCtx:
    """Just enough of a run's context to call pong's hooks: a clock and a recording gate."""

    def __init__(self):
        self.layout = load_layout("grid8x8_200um")
        self.n_channels, self.sample_rate, self.now, self.paused_samples = 64, FS, 0, 0
        self.rng = np.random.default_rng(0)
        self.sent = []

    def can_stimulate(self, ch):
        return bool(self.layout.can_stimulate[ch])

    def samples(self, seconds):
        return int(round(seconds * FS))

    def stimulate(self, pattern):
        self.sent.append((self.now, pattern))

    def decision(self, *args, **kwargs):
        pass

    def log(self, message):
        pass


def test_unpredictable_pulses_due_together_on_one_electrode_go_one_a_block():
    """Two pulses due at once on one electrode would overlap (the gate refuses the second):
    the second waits for the next block."""
    cls, _ = load_protocol("pong")
    pong, ctx = cls(), FakeCtx()
    pong.setup(ctx)
    pong.game.vx = 0.0  # the ball waits: no sensory pulse
    ch, other = pong.sensory[0], pong.sensory[1]
    pong.miss_pulses = [(10, ch), (10, other), (12, ch)]
    ctx.now = 25
    pong._deliver(ctx)
    assert [p.channels for _, p in ctx.sent] == [(ch,), (other,)]
    ctx.now = 50
    pong._deliver(ctx)
    assert [(t, p.channels, p.label) for t, p in ctx.sent[2:]] == [(50, (ch,), "miss")]


def test_a_sensory_pulse_due_with_a_miss_pulse_on_its_electrode_waits_a_block():
    """After a late call, a miss pulse may be due as the served ball's first sensory pulse,
    on the same electrode: the sensory pulse goes at the next call, not into the gate's
    overlap refusal."""
    cls, _ = load_protocol("pong")
    pong, ctx = cls(), FakeCtx()
    pong.setup(ctx)
    place = pong._place(pong.game.ball_y)
    pong.miss_pulses = [(10, place)]
    ctx.now = 25
    pong._deliver(ctx)
    assert [(p.channels, p.label) for _, p in ctx.sent] == [((place,), "miss")]
    ctx.now = 50
    pong._deliver(ctx)
    assert [(t, p.channels, p.label) for t, p in ctx.sent[1:]] == [(50, (place,), "sense")]


def test_parameters_that_cannot_work_and_the_model_state():
    cls, _ = load_protocol("pong")
    with pytest.raises(ProtocolError, match="ball_speed / frame_hz"):
        cls(ball_speed=5.0, frame_hz=5.0)
    with pytest.raises(ProtocolError, match="sense_min_hz"):
        cls(sense_min_hz=50.0)
    pong, ctx = cls(), FakeCtx()
    assert pong.model_state() is None  # before the run
    pong.setup(ctx)
    ctx.now = FS  # one second: 25 frames
    pong.on_clock(ctx, ctx.now)
    state = pong.model_state()
    assert state["view"] == "pong" and state["frame"] == 25 and state["condition"] == "stimulus"
    assert 0 <= state["ball_x"] <= 1 and state["in_play"]


def test_a_pause_freezes_the_game():
    """Paused from 10 to 14 s: no frame and no pulse while paused; then one frame per
    40 ms again, the next numbered on, not the 100 frames the clock ran ahead."""
    cls, _ = load_protocol("pong")
    s, ran, decisions, resumed = run_paused(cls(ball_speed=1.0, miss_s=1.0),
                                            "sim://?seed=1", 20.0, 10.0, 14.0)
    assert s["error"] is None
    frames = [(at, d["frame"]) for at, d in decisions if d.get("kind") == "frame"]
    paused = resumed - 4 * FS
    assert not [at for at, _ in frames if paused + 1000 < at < resumed]
    assert not [x for x in ran if paused + 1000 < x[0] < resumed]
    after = [(at, n) for at, n in frames if at >= resumed]
    before = [n for at, n in frames if at < resumed]
    assert after[0][1] == before[-1] + 1
    assert after[0][0] - resumed <= 1000
    assert after[1][0] - after[0][0] == pytest.approx(1000, abs=25)
