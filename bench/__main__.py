from bench.cli import console_main

console_main()
