"""Run `loraplus train` once per argument list in a JSON file, in one process (started by torchrun or not).

Starting torchrun costs seconds; the multi-seed distributed tests run many tiny trainings per launch.
"""

import json
import sys

from loraplus.cli import main

if __name__ == "__main__":
    for argv in json.loads(open(sys.argv[1]).read()):
        code = main(["train", *argv])
        if code != 0:
            sys.exit(code)
