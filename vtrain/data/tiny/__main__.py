from vtrain.data.tiny import main

main()
