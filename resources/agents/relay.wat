;; relay: passes a (hops, acc) token to a random member of its group until hops runs out,
;; stirring the accumulator with its own random stream; then reports acc to the "sink" agent.
;;
;; Message kind 1 payload: two little-endian i64 values, hops then acc.
;; It sends kind 1 to a peer while hops > 0, then kind 2 (acc, 8 bytes) to "sink".
(module
  (import "qhybrid" "send" (func $send (param i32 i32 i32 i32) (result i32)))
  (import "qhybrid" "random_u64" (func $random (result i64)))
  (import "qhybrid" "peer_count" (func $peer_count (result i32)))
  (import "qhybrid" "peer" (func $peer (param i32) (result i32)))
  (import "qhybrid" "lookup" (func $lookup (param i32 i32) (result i32)))
  (import "qhybrid" "log" (func $log (param i32 i32 i32)))

  (memory (export "memory") 1)
  (data (i32.const 256) "sink")
  (data (i32.const 320) "relay: chain finished")

  (func (export "qh_abi_version") (result i32) (i32.const 1))

  ;; One scratch buffer at 1024 for every incoming payload; grow memory when it is too small.
  (func (export "qh_alloc") (param $size i32) (result i32)
    (local $need i32) (local $have i32)
    (local.set $need (i32.add (i32.const 1024) (local.get $size)))
    (local.set $have (i32.mul (memory.size) (i32.const 65536)))
    (if (i32.gt_u (local.get $need) (local.get $have))
      (then
        (drop (memory.grow
          (i32.add (i32.shr_u (i32.sub (local.get $need) (local.get $have)) (i32.const 16))
                   (i32.const 1))))))
    (i32.const 1024))

  (func (export "qh_on_message")
    (param $from i32) (param $kind i32) (param $ptr i32) (param $len i32) (result i32)
    (local $hops i64) (local $acc i64) (local $to i32)
    (if (i32.lt_u (local.get $len) (i32.const 16)) (then (return (i32.const 1))))
    (local.set $hops (i64.load (local.get $ptr)))
    (local.set $acc
      (i64.add (i64.mul (i64.load offset=8 (local.get $ptr)) (i64.const 6364136223846793005))
               (call $random)))
    (i64.store offset=8 (i32.const 512) (local.get $acc))
    (if (i64.gt_s (local.get $hops) (i64.const 0))
      (then
        (i64.store (i32.const 512) (i64.sub (local.get $hops) (i64.const 1)))
        (local.set $to
          (call $peer (i32.wrap_i64
            (i64.rem_u (call $random) (i64.extend_i32_u (call $peer_count))))))
        (return (i32.ne (call $send (local.get $to) (i32.const 1) (i32.const 512) (i32.const 16))
                        (i32.const 0)))))
    (call $log (i32.const 20) (i32.const 320) (i32.const 21))
    (i32.ne (call $send (call $lookup (i32.const 256) (i32.const 4)) (i32.const 2)
                        (i32.const 520) (i32.const 8))
            (i32.const 0)))
)
