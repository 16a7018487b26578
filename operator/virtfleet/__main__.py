from virtfleet.cli import main

raise SystemExit(main())
