from vtrain.data.shards.convert import main

main()
