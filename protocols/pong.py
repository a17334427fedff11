"""Pong, the DishBrain closed loop of Kagan et al. 2022 (Neuron 110:3952, "In vitro neurons
learn and exhibit sentience when embodied in a simulated game-world").

The court is 1 wide (x, the paddle at x = 0, a wall at x = 1) and 1 high (y); a ball
moves at ``ball_speed`` court widths a second, bounces off the top, bottom and far walls,
and the culture plays the paddle. Every ``1 / frame_hz`` s of device samples (never
wall-clock) a frame:

- moves the paddle by ``paddle_speed * (up - down) / (up + down)`` court heights a
  second, ``up`` and ``down`` being the spikes detected on the ``motor_up`` and
  ``motor_down`` electrodes since the last frame;
- moves the ball; at x = 0 the ball is a hit if the paddle (``paddle_size`` high) is
  there, else a miss that ends the rally;
- records the game state with ``ctx.decision``: choice = the paddle's move, and kind
  "frame", frame, ball_x, ball_y, paddle_y, up, down, event ("hit", "miss", "serve" or
  None), rally (hits so far in this rally), hits, misses, aces.

Sensory input: one pulse at a time on the ``sensory`` electrode whose place matches the
ball's y (place code: the list runs along the paddle axis, y = 0 first) at a rate from
``sense_max_hz`` (ball at the paddle) down to ``sense_min_hz`` (ball at the far wall)
(rate code; the paper's 4-40 Hz). Feedback, by ``condition``:

- ``stimulus``: on a hit, the predictable train: every sensory electrode at ``hit_rate_hz``
  for ``hit_ms`` (100 Hz for 100 ms in the paper); on a miss, the unpredictable
  stimulation: ``miss_s`` s (4 s in the paper) of pulses on random sensory electrodes at
  random times, ``miss_rate_hz`` on average (5 Hz), at ``miss_amplitude`` (the paper used
  twice the sensory voltage: 150 vs 75 mV), and then the next serve.
- ``silent``: the same game, but no feedback stimulation: after a miss nothing at all is
  sent for ``miss_s`` s, then the next serve.
- ``no_feedback``: no feedback and no pause: after a miss the ball is served at once.
- ``rest``: no stimulation at all; the paddle is still driven by the (spontaneous)
  activity and the game scored as in ``silent``: the baseline.

Sensory pulses pause while a hit train runs and while the ball waits for its serve. A
serve puts the ball at mid-court (x = 0.5, a random y) heading for the paddle at a random
angle (|vy| up to the x speed). An ace is a miss with no hit before it in that rally.
The operator's Pause freezes the game: on resume it goes on where it stood.

Electrodes (labels, comma-separated, or "auto"): ``sensory`` (8 from the left third of
the array, spread along y), ``motor_up`` and ``motor_down`` (the right third's electrodes
above and below the array's middle). ``electrodes_file``: a JSON file with the lists
``sensory``, ``motor_up`` and ``motor_down`` (labels, or comma-separated strings), as
probe_map writes them; a set given both there and as a parameter is an error. Pulses:
biphasic, ``pulse_mode`` current or voltage, ``amplitude`` (sensory and hit, per phase in
uA or mV), ``miss_amplitude`` (the unpredictable ones), ``phase_us`` (us per phase).

Every pulse goes through ``ctx.stimulate``; a refused one is counted (and the first of
each kind logged), never retried. Pulses are labelled "sense", "hit" and "miss" in the
recording's pulses table. The summary: condition, rallies (completed: ended by a miss),
hits, misses, aces, hit_rate (hits / (hits + misses)), hits_per_min (per minute of play:
the ball moving), mean_rally (hits per completed rally), pulses sent and refused by label,
and the electrode sets (labels). Every frame is a decision (``ctx.decision``: the paddle's
move, with the ball, the paddle, the event and the score); ``model_state()`` gives the
latest frame to the GUI's Game view.
"""

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mea_control.protocol import Parameter, Protocol, ProtocolError, electrodes
from mea_control.safety import SafetyRefusal
from mea_control.types import StimPattern, StimPulse

CONDITIONS = ("stimulus", "silent", "no_feedback", "rest")
ELECTRODE_SETS = ("sensory", "motor_up", "motor_down")
#: Sensory electrodes chosen by "auto".
N_SENSORY = 8
#: The sensory plan checked before the run: the place electrode at the top rate this long
#: (the default mean-rate window of the limits).
SENSE_PLAN_S = 10.0
#: The longest way the ball may move in one frame (a court is 1 wide).
MAX_STEP = 0.5


def _fold(y):
    """A free coordinate folded into [0, 1] by reflections; (position, odd reflections)."""
    y = y % 2.0
    return (2.0 - y, True) if y > 1.0 else (y, False)


@dataclass
class Game:
    """The court's physics and score, without a device: a ball, walls, a paddle at x = 0."""

    paddle_size: float = 0.25
    ball_speed: float = 0.5
    ball_x: float = 0.5
    ball_y: float = 0.5
    vx: float = 0.0
    vy: float = 0.0
    paddle_y: float = 0.5
    rally: int = 0
    hits: int = 0
    misses: int = 0
    aces: int = 0
    rallies: list[int] = field(default_factory=list)

    @property
    def in_play(self):
        return self.vx != 0.0

    def serve(self, rng):
        """The ball at mid-court, a random y, heading for the paddle."""
        self.ball_x, self.ball_y = 0.5, float(rng.uniform(0.05, 0.95))
        self.vx = -self.ball_speed
        self.vy = self.ball_speed * float(rng.uniform(-1.0, 1.0))

    def move_paddle(self, dy):
        half = self.paddle_size / 2
        self.paddle_y = float(np.clip(self.paddle_y + dy, half, 1.0 - half))

    def step(self, dt):
        """Move the ball ``dt`` seconds; "hit", "miss" or None. After a miss the ball rests
        at the paddle's line until the next serve."""
        if not self.in_play:
            return None
        x = self.ball_x + self.vx * dt
        event = None
        if x <= 0.0:
            y_at, _ = _fold(self.ball_y + self.vy * (self.ball_x / -self.vx))
            if abs(y_at - self.paddle_y) <= self.paddle_size / 2:
                x, self.vx, event = -x, -self.vx, "hit"
                self.hits += 1
                self.rally += 1
            else:
                self.ball_x, self.ball_y, self.vx, self.vy = 0.0, y_at, 0.0, 0.0
                self._end_rally()
                return "miss"
        elif x >= 1.0:
            x, self.vx = 2.0 - x, -self.vx
        self.ball_x = x
        self.ball_y, flipped = _fold(self.ball_y + self.vy * dt)
        if flipped:
            self.vy = -self.vy
        return event

    def _end_rally(self):
        self.misses += 1
        self.aces += self.rally == 0
        self.rallies.append(self.rally)
        self.rally = 0


class Pong(Protocol):
    """Pong after Kagan et al. 2022 (DishBrain): the culture plays the paddle, fed back.

    The ball on sensory electrodes (place and rate), the paddle from motor activity,
    predictable feedback on a hit and unpredictable on a miss; see the module's text."""

    name = "pong"
    parameters = {
        "condition": Parameter(str, "stimulus", choices=CONDITIONS,
                               help="stimulus (full loop), silent (no feedback, pauses kept), "
                               "no_feedback (no feedback, no pause), rest (no stimulation)"),
        "frame_hz": Parameter(float, 25.0, unit="Hz", range=(5.0, 100.0),
                              help="game frames per second of device samples"),
        "ball_speed": Parameter(float, 0.5, unit="court/s", range=(0.05, 5.0),
                                help="the ball's speed across the court (x)"),
        "paddle_size": Parameter(float, 0.25, unit="court", range=(0.02, 1.0),
                                 help="the paddle's height, a fraction of the court's"),
        "paddle_speed": Parameter(float, 1.0, unit="court/s", range=(0.0, 20.0),
                                  help="the paddle's speed when only one motor set fires"),
        "sensory": Parameter(str, "auto", help="'auto' or labels along the paddle axis"),
        "motor_up": Parameter(str, "auto", help="'auto' or labels moving the paddle up"),
        "motor_down": Parameter(str, "auto", help="'auto' or labels moving the paddle down"),
        "electrodes_file": Parameter(str, "", help="JSON with the lists sensory, motor_up, "
                                     "motor_down (as probe_map writes them)"),
        "sense_min_hz": Parameter(float, 4.0, unit="Hz", range=(0.1, 100.0),
                                  help="sensory rate with the ball at the far wall"),
        "sense_max_hz": Parameter(float, 40.0, unit="Hz", range=(0.1, 100.0),
                                  help="sensory rate with the ball at the paddle"),
        "hit_rate_hz": Parameter(float, 100.0, unit="Hz", range=(1.0, 1000.0),
                                 help="rate of the predictable train after a hit"),
        "hit_ms": Parameter(float, 100.0, unit="ms", range=(1.0, 5000.0),
                            help="length of the predictable train"),
        "miss_s": Parameter(float, 4.0, unit="s", range=(0.0, 60.0),
                            help="length of the unpredictable stimulation (or pause) after a "
                            "miss"),
        "miss_rate_hz": Parameter(float, 5.0, unit="Hz", range=(0.0, 100.0),
                                  help="mean rate of the unpredictable pulses"),
        "pulse_mode": Parameter(str, "current", choices=("current", "voltage")),
        "amplitude": Parameter(float, 5.0, unit="uA or mV", range=(0.0, 10_000.0),
                               help="phase amplitude of sensory and hit pulses"),
        "miss_amplitude": Parameter(float, 8.0, unit="uA or mV", range=(0.0, 10_000.0),
                                    help="phase amplitude of the unpredictable pulses"),
        "phase_us": Parameter(float, 200.0, unit="us", range=(1.0, 10_000.0)),
    }

    def validate(self):
        p = self.p
        if p.sense_min_hz > p.sense_max_hz:
            raise ProtocolError("sense_min_hz must not exceed sense_max_hz")
        if p.ball_speed / p.frame_hz > MAX_STEP:
            raise ProtocolError(f"ball_speed / frame_hz must be at most {MAX_STEP} court a "
                                "frame (the ball would pass walls unseen): raise frame_hz")
        if self._hit_pulses() < 1:
            raise ProtocolError("hit_ms at hit_rate_hz gives no pulse: lengthen hit_ms")

    # -- patterns (the plan and the run build them here) ------------------------------------
    def _pulse(self, amplitude):
        return StimPulse.biphasic(amplitude, self.p.phase_us, mode=self.p.pulse_mode)

    def _hit_pulses(self):
        return int(round(self.p.hit_ms * self.p.hit_rate_hz / 1000))

    def _sense_pattern(self, channel):
        return StimPattern.single([channel], self._pulse(self.p.amplitude), label="sense")

    def _hit_train(self, channels):
        return StimPattern.train(channels, self._pulse(self.p.amplitude), self._hit_pulses(),
                                 self.p.hit_rate_hz, label="hit")

    def _miss_pattern(self, channel):
        return StimPattern.single([channel], self._pulse(self.p.miss_amplitude), label="miss")

    def planned_patterns(self, ctx):
        """Sensory: every sensory electrode's pulse, and one electrode at sense_max_hz for
        SENSE_PLAN_S; stimulus: the hit train and the miss pulse on every sensory electrode."""
        sensory, _, _ = self._electrodes(ctx)
        if self.p.condition == "rest":
            return []
        p, pulse = self.p, self._pulse(self.p.amplitude)
        plan = [StimPattern.single(sensory, pulse, label="sense"),
                StimPattern.train([sensory[0]], pulse,
                                  max(1, int(round(SENSE_PLAN_S * p.sense_max_hz))),
                                  p.sense_max_hz, label="sense")]
        if p.condition == "stimulus":
            miss = self._pulse(p.miss_amplitude)
            plan += [self._hit_train(sensory),
                     StimPattern.single(sensory, miss, label="miss")]
        return plan

    # -- electrodes -----------------------------------------------------------------------
    def _electrodes(self, ctx):
        """(sensory, motor_up, motor_down) channels; ProtocolError for a set that cannot
        work here."""
        given = self._given_sets()
        layout = ctx.layout
        recording = [ch for ch in range(layout.n_electrodes)
                     if ch not in layout.ground and ch not in layout.reference]
        auto = _auto_sets(layout, recording, ctx.can_stimulate)
        sets = []
        for name, default in zip(ELECTRODE_SETS, auto, strict=True):
            labels = given.get(name)
            sets.append(default if labels is None else electrodes(ctx, labels, name))
        sensory, up, down = sets
        if len(sensory) < 1 or len(up) < 1 or len(down) < 1:
            raise ProtocolError(f"layout {layout.name} is too small for pong's electrode sets")
        if self.p.condition != "rest":
            blocked = [layout.labels[ch] for ch in sensory if not ctx.can_stimulate(ch)]
            if blocked:
                raise ProtocolError(f"sensory: {', '.join(blocked)} cannot stimulate here "
                                    "(ground, reference, forbidden, or not a stimulation "
                                    "electrode)")
        for name, chans in zip(ELECTRODE_SETS[1:], (up, down), strict=True):
            bad = [layout.labels[ch] for ch in chans if ch not in recording]
            if bad:
                raise ProtocolError(f"{name}: {', '.join(bad)} is a ground or reference "
                                    "electrode")
        for (a, ca), (b, cb) in (((ELECTRODE_SETS[0], sensory), (ELECTRODE_SETS[1], up)),
                                 ((ELECTRODE_SETS[0], sensory), (ELECTRODE_SETS[2], down)),
                                 ((ELECTRODE_SETS[1], up), (ELECTRODE_SETS[2], down))):
            both = sorted(set(ca) & set(cb))
            if both:
                raise ProtocolError(f"{a} and {b} share electrode(s) "
                                    + ", ".join(layout.labels[ch] for ch in both))
        return sensory, up, down

    def _given_sets(self):
        """Label lists given as parameters or in electrodes_file, by set name."""
        given = {name: getattr(self.p, name) for name in ELECTRODE_SETS
                 if getattr(self.p, name) != "auto"}
        if not self.p.electrodes_file:
            return given
        path = Path(self.p.electrodes_file)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ProtocolError(f"electrodes_file {path}: {exc}") from None
        if not isinstance(data, dict):
            raise ProtocolError(f"electrodes_file {path}: expected a JSON object with "
                                + ", ".join(ELECTRODE_SETS))
        out = dict(given)
        for name in ELECTRODE_SETS:
            if name in data:
                if name in given:
                    raise ProtocolError(f"{name} is given both as a parameter and in "
                                        f"electrodes_file {path}: give it once")
                out[name] = data[name]  # labels, comma-separated or a list
        return out

    # -- the run --------------------------------------------------------------------------
    def setup(self, ctx):
        p = self.p
        self.sensory, self.motor_up, self.motor_down = self._electrodes(ctx)
        self.labels = ctx.layout.labels
        self.up_mask = np.zeros(ctx.n_channels, bool)
        self.up_mask[self.motor_up] = True
        self.down_mask = np.zeros(ctx.n_channels, bool)
        self.down_mask[self.motor_down] = True
        self.game = Game(paddle_size=p.paddle_size, ball_speed=p.ball_speed)
        self.game.serve(ctx.rng)
        self.frame_samples = ctx.sample_rate / p.frame_hz
        self.start, self.frames = ctx.now, 0
        self.up = self.down = 0
        self.serve_at = None  # the sample of the next serve while the ball waits
        self.quiet_until = ctx.now  # no sensory pulse before (a hit train runs)
        self.last_sense = None
        self.miss_pulses = []  # (sample, channel) of the unpredictable stimulation due
        self.play_s = 0.0  # seconds with the ball moving
        self.sent, self.refused = Counter(), Counter()
        self._paused = ctx.paused_samples
        self._state = self._snapshot(None)

    def on_spikes(self, ctx, spikes):
        self.up += int(np.count_nonzero(self.up_mask[spikes.channel]))
        self.down += int(np.count_nonzero(self.down_mask[spikes.channel]))

    def on_clock(self, ctx, sample):
        """Run the frames due by now, then the pulses due."""
        if ctx.paused_samples != self._paused:
            self._resume(ctx.paused_samples - self._paused)
        while ctx.now >= self.start + (self.frames + 1) * self.frame_samples:
            self._frame(ctx)
        self._deliver(ctx)

    def _resume(self, paused):
        """The operator paused the game for ``paused`` samples: it goes on where it stood,
        its frames, serve and unpredictable pulses later by as much."""
        self._paused += paused
        self.start += paused
        if self.serve_at is not None:
            self.serve_at += paused
        if self.last_sense is not None:
            self.last_sense += paused
        self.miss_pulses = [(at + paused, channel) for at, channel in self.miss_pulses]
        self.up = self.down = 0  # spikes of the last frame before the pause: not heard whole

    def _frame(self, ctx):
        p, game = self.p, self.game
        self.frames += 1
        frame_end = int(round(self.start + self.frames * self.frame_samples))
        dt = self.frame_samples / ctx.sample_rate
        up, down = self.up, self.down
        self.up = self.down = 0
        move = p.paddle_speed * dt * (up - down) / (up + down) if up + down else 0.0
        game.move_paddle(move)
        event = None
        if self.serve_at is not None and frame_end >= self.serve_at:
            self.serve_at, event = None, "serve"
            game.serve(ctx.rng)
        elif game.in_play:
            self.play_s += dt
            event = game.step(dt)
            if event == "hit":
                self._on_hit(ctx)
            elif event == "miss":
                self._on_miss(ctx, frame_end)
        self._state = self._snapshot(event)
        ctx.decision(round(move, 5), kind="frame", frame=self.frames, event=event, up=up,
                     down=down, **{k: self._state[k] for k in (
                         "ball_x", "ball_y", "paddle_y", "rally", "hits", "misses", "aces")})

    def _on_hit(self, ctx):
        if self.p.condition == "stimulus":
            train = self._hit_train(self.sensory)
            self._send(ctx, train)
            self.quiet_until = ctx.now + int(np.ceil(train.train_count * ctx.sample_rate
                                                     / train.train_rate_hz))

    def _on_miss(self, ctx, frame_end):
        p = self.p
        if p.condition == "no_feedback":
            self.serve_at = frame_end
            return
        self.serve_at = frame_end + ctx.samples(p.miss_s)
        if p.condition == "stimulus":
            self.miss_pulses = _random_pulses(ctx.rng, ctx.now, ctx.samples(p.miss_s),
                                              p.miss_s * p.miss_rate_hz, self.sensory)

    def _deliver(self, ctx):
        """The unpredictable pulses due, and the sensory pulse when its interval is up."""
        now, used = ctx.now, set()
        # one pulse an electrode a call: two due at once on one electrode would overlap
        while self.miss_pulses and self.miss_pulses[0][0] <= now \
                and self.miss_pulses[0][1] not in used:
            _, channel = self.miss_pulses.pop(0)
            used.add(channel)
            self._send(ctx, self._miss_pattern(channel))
        game = self.game
        if self.p.condition == "rest" or not game.in_play or now < self.quiet_until:
            return
        interval = ctx.sample_rate / self._sense_rate(game.ball_x)
        place = self._place(game.ball_y)
        if (self.last_sense is None or now - self.last_sense >= interval) \
                and place not in used:  # else next call: it would overlap a miss pulse
            self.last_sense = now
            self._send(ctx, self._sense_pattern(place))

    def _sense_rate(self, x):
        p = self.p
        return p.sense_max_hz - (p.sense_max_hz - p.sense_min_hz) * float(np.clip(x, 0, 1))

    def _place(self, y):
        k = min(int(y * len(self.sensory)), len(self.sensory) - 1)
        return self.sensory[max(k, 0)]

    def _send(self, ctx, pattern):
        """Through the gate; a refusal is counted (the first of each label logged)."""
        try:
            ctx.stimulate(pattern)
        except SafetyRefusal as refusal:
            if not self.refused[pattern.label]:
                ctx.log(f"pong: {pattern.label} pulse refused ({refusal}); further refusals "
                        "are counted in the summary")
            self.refused[pattern.label] += 1
            return
        self.sent[pattern.label] += 1

    # -- for the GUI and the summary --------------------------------------------------------
    def _snapshot(self, event):
        g = self.game
        return {"view": "pong", "condition": self.p.condition, "frame": self.frames,
                "ball_x": round(g.ball_x, 5), "ball_y": round(g.ball_y, 5),
                "paddle_y": round(g.paddle_y, 5), "paddle_size": g.paddle_size,
                "in_play": g.in_play, "event": event, "rally": g.rally, "hits": g.hits,
                "misses": g.misses, "aces": g.aces,
                "longest_rally": max([*g.rallies, g.rally])}

    def model_state(self):
        """The game now, for the GUI's Game view: {"view": "pong", condition, frame,
        ball_x, ball_y, paddle_y, paddle_size (court units), in_play, event (of the latest
        frame), rally, hits, misses, aces, longest_rally}, or None before the run. Safe from
        any thread: each frame replaces the dict, and a copy is returned."""
        state = getattr(self, "_state", None)
        return None if state is None else dict(state)

    def summary(self):
        game = getattr(self, "game", None)
        if game is None:
            return {}
        minutes = self.play_s / 60
        outcomes = game.hits + game.misses
        return {
            "condition": self.p.condition, "rallies": len(game.rallies), "hits": game.hits,
            "misses": game.misses, "aces": game.aces,
            "hit_rate": round(game.hits / outcomes, 4) if outcomes else None,
            "hits_per_min": round(game.hits / minutes, 3) if minutes else None,
            "mean_rally": round(float(np.mean(game.rallies)), 3) if game.rallies else None,
            "pulses_sent": dict(self.sent), "pulses_refused": dict(self.refused),
            **{name: [self.labels[c] for c in getattr(self, name)]
               for name in ("sensory", "motor_up", "motor_down")},
        }


def _auto_sets(layout, recording, can_stimulate):
    """Sensory: N_SENSORY stimulation electrodes of the left third, spread along y (the
    leftmost at each height), bottom first; motor: the right third's recording electrodes,
    above (up) and below (down) the array's middle."""
    pos = np.asarray(layout.positions_um, float)
    x, y = pos[:, 0], pos[:, 1]
    third = (x.max() - x.min()) / 3
    left = [ch for ch in recording if x[ch] <= x.min() + third and can_stimulate(ch)]
    sensory = []
    if left:
        for target in np.linspace(y[left].min(), y[left].max(), N_SENSORY):
            free = [ch for ch in left if ch not in sensory]
            if free:
                sensory.append(min(free, key=lambda ch: (abs(y[ch] - target), x[ch])))
        sensory.sort(key=lambda ch: (y[ch], x[ch]))
    right = [ch for ch in recording if x[ch] >= x.max() - third]
    middle = (y.min() + y.max()) / 2
    return (sensory, [ch for ch in right if y[ch] > middle],
            [ch for ch in right if y[ch] < middle])


def _random_pulses(rng, now, span, mean_count, channels):
    """The unpredictable stimulation: Poisson(mean_count) pulses at uniform random samples
    in [now, now + span), each on a random electrode; sorted by sample."""
    n = int(rng.poisson(mean_count)) if mean_count > 0 else 0
    samples = np.sort(rng.integers(now, now + max(span, 1), n))
    chosen = rng.choice(channels, n)
    return [(int(s), int(c)) for s, c in zip(samples, chosen, strict=True)]
