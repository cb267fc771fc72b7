"""distributed.reports: the closing line, and terminal control sequences kept out of log files."""
import io

from distributed.reports import TerminalOnly, describe


def test_the_closing_line():
    summary = dict(skipped_report='', stopped_by=0, test_accuracy=0.75, test_loss=0.5,
                   epochs=8.0, iterations=80, seconds=60.0, images_per_sec=42.0, ranks=2,
                   out='/r')
    assert describe(summary) == ('test accuracy 0.750 (loss 0.500) after 8.00 epochs (80 '
                                 'iterations), 60 s, 42.0 images/s on 2 ranks; results in /r')
    assert describe(dict(summary, test_accuracy=None)).startswith('not evaluated after')
    assert describe(dict(summary, ranks=1)).endswith('images/s on 1 rank; results in /r')


class Stream(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def test_terminal_control_sequences_reach_only_a_terminal():
    # What chainer's PrintReport and ProgressBar write: an erase, a line, a cursor move.
    text = '\x1b[Jepoch 1   0.5\n\x1b[2A\x1b[?25l'
    for tty, expected in ((True, text), (False, 'epoch 1   0.5\n')):
        stream = Stream(tty)
        TerminalOnly(stream).write(text)
        assert stream.getvalue() == expected
