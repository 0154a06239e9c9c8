from mildnet.cli import main

raise SystemExit(main())
