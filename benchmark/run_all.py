"""Run every benchmark in this folder, one after another (`make bench`)."""

import subprocess
import sys
from pathlib import Path

if __name__ == "__main__":
    for script in sorted(Path(__file__).parent.glob("*.py")):
        if script.name != "run_all.py":
            print(f"== {script.name}", flush=True)
            subprocess.run([sys.executable, str(script)], check=True)
