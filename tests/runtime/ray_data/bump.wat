;; bump: a read-modify-write of the writable tensor "board", for the Ray tensor tests.
;;
;; Any message: reads the i64 at byte 0 of "board", writes back value * 3 + (sender + 2),
;; applied at the end of the tick. What it writes depends on what it read, so an actor that
;; read a stale copy of "board" changes the trace (the write's digest is in it).
(module
  (import "qhybrid" "tensor_open" (func $open (param i32 i32) (result i32)))
  (import "qhybrid" "tensor_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "qhybrid" "tensor_write" (func $write (param i32 i32 i32 i32) (result i32)))

  (memory (export "memory") 1)
  (data (i32.const 256) "board")

  (func (export "qh_abi_version") (result i32) (i32.const 1))
  (func (export "qh_alloc") (param $size i32) (result i32) (i32.const 1024))

  (func (export "qh_on_message")
    (param $from i32) (param $kind i32) (param $ptr i32) (param $len i32) (result i32)
    (local $h i32)
    (local.set $h (call $open (i32.const 256) (i32.const 5)))
    (if (i32.lt_s (local.get $h) (i32.const 0)) (then (return (i32.const 1))))
    (if (i32.ne (call $read (local.get $h) (i32.const 0) (i32.const 512) (i32.const 8))
                (i32.const 8))
      (then (return (i32.const 2))))
    (i64.store (i32.const 512)
      (i64.add (i64.mul (i64.load (i32.const 512)) (i64.const 3))
               (i64.extend_i32_s (i32.add (local.get $from) (i32.const 2)))))
    (i32.ne (call $write (local.get $h) (i32.const 0) (i32.const 512) (i32.const 8))
            (i32.const 0)))
)
