"""The server's turn taking (serving.turns): the rule, a trusted predictor, and the replay
of both on a recorded dialogue."""

import numpy as np

from minmo.models.duplex import Decision
from minmo.serving.turns import TurnPolicy, replay_turns, turn_decision


def test_vad_rule_replay_responds_after_silence_and_stops_on_sustained_barge_in():
    """The server's rule replayed on a recording: RESPOND once the gate has seen 500 ms of
    silence after the user's turn; while the assistant speaks, a 160 ms blip is heard and
    ignored (CONTINUE) and 640 ms of speech stops it after 600 ms (240 ms: sooner). The recorded assistant
    answers 320 ms after the user stops, before the rule would: that answer does not make the
    rule's own RESPOND impossible (it comes late, as live); the recording cuts the assistant
    40 ms into the barge-in, but live it talks until the rule stops it."""
    probs = np.zeros(200, dtype=np.float32)  # 32 ms windows: 6.4 s
    probs[10:40] = 0.9  # user turn, 0.32 .. 1.28 s
    probs[100:105] = 0.95  # blip while the assistant speaks (1.6 s .. 4.2 s), 3.2 .. 3.36 s
    probs[130:150] = 0.95  # barge-in, 4.16 .. 4.8 s
    frame = 1280  # 80 ms

    def speaking(sample):
        return 1.6 * 16000 <= sample < 4.2 * 16000

    out = replay_turns(probs, speaking, frame, 80, policy=TurnPolicy(barge_in_ms=240))
    # silence from 1.28 s: the gate stops at the end of the window reaching 500 ms (1.792 s),
    # decided in frame 22 (1.76 .. 1.84 s); after the barge-in: silence from 4.8 s, gate stop
    # at 5.312 s, frame 66
    assert np.flatnonzero(out == Decision.RESPOND).tolist() == [22, 66]
    # barge-in candidate from 4.16 s; 240 ms of speech heard at 4.416 s: frame 55
    assert np.flatnonzero(out == Decision.STOP).tolist() == [55]
    assert not np.isin(out[20:22], [Decision.STOP, Decision.RESPOND]).any()  # recorded answer
    assert (out[23:55] == Decision.CONTINUE).all()  # the blip at 3.2 s is not a barge-in
    assert (out[67:] == Decision.LISTEN).all()
    # the default span, 600 ms of speech: heard at 4.768 s, frame 59
    out = replay_turns(probs, speaking, frame, 80)
    assert np.flatnonzero(out == Decision.STOP).tolist() == [59]
    # with predictor_stop, a trusted predictor's STOP also interrupts (only during a barge-in
    # candidate): its STOP in the blip stops; its silence through the barge-in does not,
    # unless the speech goes on for barge_in_ms
    predicted = np.zeros(80, dtype=np.int64)
    predicted[41] = Decision.STOP
    predicted[5] = Decision.RESPOND  # no open turn: ignored
    only = replay_turns(probs, speaking, frame, 80, predicted=predicted,
                        policy=TurnPolicy(trust_predictor=True, predictor_stop=True,
                                          barge_in_ms=1e9))
    assert np.flatnonzero(only == Decision.STOP).tolist() == [41]
    assert np.flatnonzero(only == Decision.RESPOND).tolist() == [22, 66]
    out = replay_turns(probs, speaking, frame, 80, predicted=predicted,
                       policy=TurnPolicy(trust_predictor=True, predictor_stop=True))
    assert np.flatnonzero(out == Decision.STOP).tolist() == [41, 59]
    # the default: its RESPOND is trusted, its STOP is not
    no_stop = replay_turns(probs, speaking, frame, 80, predicted=predicted)
    assert np.flatnonzero(no_stop == Decision.STOP).tolist() == [59]


def test_trusted_predictor_responds_after_short_silence_rule_after_the_gate():
    kw = dict(end=16000, turn_open=True, turn_stopped=False, candidate=None,
              barge_in_ms=600, respond_silence_ms=160)
    # 192 ms since the last speech window: the predictor may answer; the rule waits for the gate
    assert turn_decision(False, Decision.RESPOND, last_speech=16000 - 3072, **kw) == Decision.RESPOND
    assert turn_decision(False, None, last_speech=16000 - 3072, **kw) == Decision.LISTEN
    # the user is still talking (speech 64 ms ago): not even the predictor answers
    assert turn_decision(False, Decision.RESPOND, last_speech=16000 - 1024, **kw) == Decision.LISTEN
    # while the assistant speaks, a trusted predictor's STOP needs a barge-in candidate
    busy = dict(kw, turn_open=False)
    assert turn_decision(True, Decision.STOP, last_speech=16000, **busy) == Decision.CONTINUE
    assert turn_decision(True, Decision.STOP, last_speech=16000,
                         **dict(busy, candidate=15000)) == Decision.STOP
    # 500 ms of speech (a back-channel's length) do not interrupt, with or without the
    # predictor's CONTINUE ...
    for predicted in (Decision.CONTINUE, None):
        assert turn_decision(True, predicted, last_speech=16000,
                             **dict(busy, candidate=8000)) == Decision.CONTINUE
        # ... but 600 ms of speech do
        assert turn_decision(True, predicted, last_speech=16000,
                             **dict(busy, candidate=16000 - 9600)) == Decision.STOP
    # a STOP once the user has gone quiet (as a back-channel ends) is not a barge-in: it
    # counts within stop_speech_ms (100) of the last speech window
    quiet = dict(busy, candidate=14000, stop_speech_ms=100)
    assert turn_decision(True, Decision.STOP, last_speech=16000 - 1600, **quiet) == Decision.STOP
    assert turn_decision(True, Decision.STOP, last_speech=16000 - 2560,
                         **quiet) == Decision.CONTINUE
    assert turn_decision(True, Decision.STOP, last_speech=16000 - 2560,
                         **dict(quiet, stop_speech_ms=None)) == Decision.STOP


def test_replay_defaults_are_the_servers():
    import inspect

    from minmo.serving.protocol import TurnDetection
    from minmo.serving.session import SessionLimits
    from minmo.serving.vad import VADGate

    params = inspect.signature(replay_turns).parameters
    limits, detection = SessionLimits(), TurnDetection()
    expected = {"threshold": detection.threshold, "silence_ms": detection.silence_duration_ms,
                "echo_threshold": limits.echo_threshold}
    assert {k: params[k].default for k in expected} == expected
    assert limits.turns == TurnPolicy()  # the replay's policy is TurnPolicy's defaults too
    assert VADGate().silence_ms == detection.silence_duration_ms


def test_the_server_waits_the_models_own_respond_silence():
    """``duplex.respond_silence_ms`` of the model config reaches the server's policy and the
    policies ``minmo eval`` replays; a setting given explicitly still wins."""
    from minmo.config import load_model_config
    from minmo.serving.turns import server_policies

    cfg = load_model_config("tiny")
    assert TurnPolicy.for_model(cfg).respond_silence_ms == TurnPolicy.respond_silence_ms
    cfg.duplex.respond_silence_ms = 240.0
    policy = TurnPolicy.for_model(cfg, trust_predictor=True)
    assert (policy.trust_predictor, policy.respond_silence_ms) == (True, 240.0)
    assert TurnPolicy.for_model(cfg, respond_silence_ms=80.0).respond_silence_ms == 80.0
    replayed = server_policies(240.0)
    assert replayed["VAD rule + predictor"].respond_silence_ms == 240.0
    # at 192 ms of silence the predictor's RESPOND waits under 240 ms, not under 160 ms
    kw = dict(end=16000, turn_open=True, turn_stopped=False, candidate=None, barge_in_ms=600,
              last_speech=16000 - 3072)
    assert turn_decision(False, Decision.RESPOND, respond_silence_ms=240.0, **kw) == Decision.LISTEN
    assert turn_decision(False, Decision.RESPOND, respond_silence_ms=160.0, **kw) == Decision.RESPOND


def test_a_short_barge_in_read_as_a_command_stops_and_a_back_channel_does_not():
    """The 160 ms blip while the assistant speaks (3.2 .. 3.36 s) is shorter than barge_in_ms:
    the server reads its words once the user has paused 150 ms after it. Read as "Stop." it
    stops the assistant; read as "Mm hmm." it does not, and the sustained barge-in later
    stops by its length, unread. Each candidate is read once; with read_commands off, none."""
    probs = np.zeros(200, dtype=np.float32)
    probs[10:40] = 0.9
    probs[100:105] = 0.95
    probs[130:150] = 0.95
    frame = 1280

    def speaking(sample):
        return 1.6 * 16000 <= sample < 4.2 * 16000

    def reader(text, calls):
        def read(start, end):
            calls.append((start, end))
            return text
        return read

    calls: list = []
    out = replay_turns(probs, speaking, frame, 80, read_words=reader("Stop.", calls))
    # candidate from 3.2 s (51200), speech to 3.36 s (53760); 150 ms later: frame 43, which
    # ends at 56320; read from 250 ms before the candidate
    assert calls == [(47200, 56320)]
    assert np.flatnonzero(out == Decision.STOP).tolist()[0] == 43
    calls = []
    out = replay_turns(probs, speaking, frame, 80, read_words=reader("Mm hmm.", calls))
    assert calls == [(47200, 56320)]
    assert np.flatnonzero(out == Decision.STOP).tolist() == [59]
    calls = []
    out = replay_turns(probs, speaking, frame, 80, read_words=reader("Stop.", calls),
                       policy=TurnPolicy(read_commands=False))
    assert calls == [] and np.flatnonzero(out == Decision.STOP).tolist() == [59]


def test_commands_are_the_duplex_corpus_commands_at_the_start_of_the_words():
    from minmo.data.qa import BACKCHANNELS, COMMANDS
    from minmo.serving.turns import is_command

    assert all(is_command(c.capitalize() + ".") for c in COMMANDS)
    assert not any(is_command(b) for b in BACKCHANNELS)
    assert is_command("Stop it.") and is_command("Wait, what?")
    assert not is_command("Stopping bit.") and not is_command("Cancel.") and not is_command("")


def test_a_turn_that_is_only_a_command_is_not_answered():
    """"Stop." asks for silence: after the barge-in it decided, the turn the command opened
    is committed without a reply (the VAD gate's RESPOND at frame 48 becomes LISTEN) unless
    the user says more after the command."""
    from minmo.serving.turns import TurnState

    probs = np.zeros(200, dtype=np.float32)
    probs[10:40] = 0.9
    probs[100:105] = 0.95  # "stop", 3.2 .. 3.36 s; the recording cuts the assistant at 3.4 s

    def speaking(sample):
        return 1.6 * 16000 <= sample < 3.4 * 16000

    out = replay_turns(probs, speaking, 1280, 80, read_words=lambda start, end: "Stop.")
    assert np.flatnonzero(out == Decision.STOP).tolist() == [43]
    assert np.flatnonzero(out == Decision.RESPOND).tolist() == [22]
    turn = TurnState()
    turn.vad_event("start", 1512, busy=True)
    turn.vad_event("speech", 5000, busy=True)
    turn.heard_words("Stop.")
    turn.barged_in()
    turn.opened()
    assert turn.only_command()
    turn.vad_event("speech", 9000, busy=False)  # "stop, tell me about rivers"
    assert not turn.only_command()
    turn.closed()
    assert not turn.only_command()
