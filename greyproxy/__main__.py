from greyproxy.cli import main

raise SystemExit(main())
