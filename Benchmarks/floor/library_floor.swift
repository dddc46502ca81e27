// The Swift side of the library floor (library_floor.c): the runtime pieces every agent
// starts (a task on the cooperative pool, a Dispatch semaphore, a Mutex), around the C
// part that opens the agent's libraries. Prints `ready` and then idles, like the agent.
import Dispatch
import Glibc
import Synchronization

@_silgen_name("library_floor_setup")
func libraryFloorSetup() -> UnsafePointer<CChar>?

let setups = Mutex(0)

@main
struct LibraryFloor {
    static func main() async {
        if let why = libraryFloorSetup() {
            fputs("library floor: \(String(cString: why))\n", stderr)
            exit(1)
        }
        let done = DispatchSemaphore(value: 0)
        await Task { setups.withLock { $0 += 1 }; done.signal() }.value
        done.wait()
        print("ready")
        fflush(stdout)
        while true { sleep(60) }
    }
}
