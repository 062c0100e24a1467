import os
import sys

# the project is flat: make `import model`, `import codec`, ... work from tests/
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
