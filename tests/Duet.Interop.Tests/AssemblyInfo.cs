// Every test here starts a real controller (drive files, an NBD port, a management socket)
// and real client processes; on a two-core machine they run one at a time.
[assembly: CollectionBehavior(DisableTestParallelization = true)]
